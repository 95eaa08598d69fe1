//! # metaproxy-xds
//!
//! An xDS client for metaproxy: over one ADS stream (gRPC) it takes clusters (CDS),
//! endpoints (EDS) and Aeraki MetaProtocol route configurations (by the listeners'
//! `route_config` names) from Istio, Aeraki or any xDS control plane, and applies them
//! through [`metaproxy::ServerHandle::apply_dynamic`], the same atomic swap as a
//! config reload. See docs/XDS.md.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod aeraki;
mod client;
pub mod convert;
pub mod state;

pub use client::{XdsClient, REQUEST_QUEUE};

/// Why a stream to the control plane ended (logged; the client reconnects).
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// `xds.address` does not make a valid gRPC endpoint.
    #[error("invalid control plane address: {0}")]
    Address(String),
    /// The connection could not be made.
    #[error("cannot connect to the control plane: {0}")]
    Connect(String),
    /// The stream failed or was closed.
    #[error("stream error: {0}")]
    Stream(String),
}

/// Starts the xDS client when `handle`'s config has an `xds:` section; returns `None`
/// otherwise. Must be called inside a tokio runtime.
pub fn spawn_if_configured(handle: &metaproxy::ServerHandle) -> Option<XdsClient> {
    let config = handle.config().xds.clone()?;
    Some(XdsClient::spawn(handle.clone(), config))
}
