//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use meta_protocol::{Codec, Message, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::DubboCodec;

#[path = "requests.rs"]
mod requests;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use requests::{payload_request, typical_request};

/// A downstream codec with the default frame limit.
pub fn codec() -> DubboCodec {
    DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE)
}

/// Decodes one whole frame, panicking (test failure) on anything else.
pub fn decode_one(frame: &[u8]) -> Message {
    let mut buf = BytesMut::from(frame);
    let msg = codec()
        .decode(&mut buf)
        .expect("decodes")
        .expect("whole frame");
    assert!(buf.is_empty(), "frame fully consumed");
    msg
}

/// Encodes a message with a fresh codec.
pub fn encode(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    codec().encode(msg, &mut out).expect("encodes");
    out.freeze()
}
