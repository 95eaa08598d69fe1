//! PLACEHOLDER, being replaced by `metaproxy demo`.
#![allow(missing_docs)]

/// Arguments of `metaproxy demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Errors of `metaproxy demo`.
#[derive(Debug, thiserror::Error)]
#[error("metaproxy demo is not built yet")]
pub struct DemoError;

/// Runs `metaproxy demo`.
pub fn run(_args: DemoArgs) -> Result<(), DemoError> {
    Err(DemoError)
}
