//! # metaproxy-dubbo: the Dubbo 2 (hessian2) codec for metaproxy
//!
//! [`DubboCodecFactory`] (codec name `dubbo`) creates a [`DubboCodec`] per connection.
//! Decoding reads the 16-byte header and, for requests, the service path, version,
//! method and attachments of the hessian2 body into routable metadata, skipping the
//! arguments without materialising them; metadata values slice the frame. Encoding
//! forwards the frame byte for byte, rewriting only the request id and, when mutations
//! are set, the attachments map.
//!
//! [`hessian2`] is the serialization (reader, writer, [`hessian2::Value`]); [`frames`]
//! builds request and response frames for tests, the load generator and demo backends.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod codec;
pub mod frames;
pub mod header;
pub mod hessian2;

pub use codec::{
    count_parameters, local_reply_status, write_error_response, DubboCodec, DubboCodecFactory,
    DubboLayout, EAGER_KEYS,
};
