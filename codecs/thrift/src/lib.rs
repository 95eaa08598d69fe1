//! Apache Thrift codec (framed, unframed, header; binary, compact) for metaproxy.
//!
//! Register [`ThriftCodecFactory`] (name `thrift`) in a [`meta_protocol::CodecRegistry`].
//! Listener options: `transport: framed|unframed|header|auto` and
//! `protocol: binary|compact|auto` (defaults `auto`/`auto`).
//!
//! Decoding reads only the transport envelope and the message header (name, type,
//! sequence id): framed and header-transport payloads are never parsed, so the cost of a
//! frame does not grow with its size beyond the copy. Unframed messages are delimited
//! by skipping their argument struct. Each message is tagged with its transport ×
//! protocol ([`wire_format`]) so upstream connections speak exactly what the client
//! spoke.
//!
//! Metadata (what routes match on; see `docs/CONFIG.md`): `method` (without any `Service:` prefix), `service` (the prefix of
//! a multiplexed call), and each header-transport info header under its own key.
//!
//! [`frames`] builds and answers frames for load generators, demo backends and tests.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod codec;
mod format;
pub mod frames;
mod read;
mod write;

pub use codec::{app_exception, ThriftCodec, ThriftCodecFactory, ThriftLayout};
pub use format::{split_wire, wire_format, Protocol, ThriftOptions, Transport};
pub use read::MAX_DEPTH;
