//! # metaproxy-cli: the `metaproxy` binary, as a library
//!
//! The command line (`run`, `check`, `demo`, `bench`) over any [`CodecRegistry`](metaproxy::meta_protocol::CodecRegistry), so a
//! protocol author's own proxy binary is one line and gets every command with their
//! codec registered:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let codecs = metaproxy::default_registry();
//!     // codecs.register(std::sync::Arc::new(MyCodecFactory));
//!     metaproxy_cli::main_with(codecs)
//! }
//! ```
//!
//! The tools the binary carries live here too, so the runtime library (`metaproxy`)
//! does not pay for them: [`demo`] (in-process backends, proxy and traffic),
//! [`loadgen`] (`metaproxy bench`) and [`backend`] (echo backends for tests and benches).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod backend;
mod commands;
pub mod demo;
pub mod loadgen;

pub use commands::{main_with, Cli};
