//! PLACEHOLDER, being replaced by the load generator (`metaproxy bench`).
#![allow(missing_docs)]

/// Arguments of `metaproxy bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Errors of `metaproxy bench`.
#[derive(Debug, thiserror::Error)]
#[error("metaproxy bench is not built yet")]
pub struct BenchError;

/// Runs `metaproxy bench`.
pub fn run(_args: BenchArgs) -> Result<(), BenchError> {
    Err(BenchError)
}
