//! # metaproxy
//!
//! An L7 proxy for RPC protocols. A protocol author writes one small codec (see
//! [`meta_protocol`]); metaproxy does listeners, routing on metadata, weighted splits,
//! mirroring, load balancing, upstream pooling and multiplexing, timeouts, retries and
//! protocol-native error replies. Dubbo and Thrift ship as reference codecs.
//!
//! Embedding in your own binary:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut codecs = metaproxy::default_registry();
//! // codecs.register(Arc::new(MyCodecFactory));
//! let server = metaproxy::Server::from_file("proxy.yaml".as_ref(), codecs)?;
//! let running = server.bind().await?;
//! running.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod budget;
mod buffer_pool;
mod clock;
mod cluster;
mod codecs;
pub mod config;
mod delivery;
mod downstream;
mod endpoint_link;
pub mod filter;
pub mod hot_restart;
mod id_table;
mod listener;
pub mod observe;
mod pending;
mod request_token;
pub mod runtime;
mod server;
mod shared;
mod short_lock;
mod snapshot;
mod socket_io;
mod task_wake;
mod turn_end;
mod unwritten;
mod upstream;

pub use codecs::default_registry;
pub use hot_restart::HotRestartError;
pub use server::{BindError, ReloadOutcome, RunningServer, Server, ServerHandle};
pub use snapshot::{validate, validate_with_filters};

pub use meta_protocol;
#[cfg(feature = "dubbo")]
pub use metaproxy_dubbo as dubbo;
pub use metaproxy_router as router;
#[cfg(feature = "thrift")]
pub use metaproxy_thrift as thrift;
