//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use meta_protocol::{Codec, Message, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_dubbo::hessian2::Writer;
use metaproxy_dubbo::DubboCodec;

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

/// The "typical request" of the benchmarks: 3 arguments (an int, a string, a 100-byte
/// binary) and 6 attachments (path, interface, version, group, timeout, user).
pub fn typical_request(id: u64) -> Bytes {
    let mut args = BytesMut::new();
    Writer::new(&mut args)
        .write_int(42)
        .write_string("hello world")
        .write_binary(&[7u8; 100]);
    RequestFrame {
        version: "1.0.0",
        group: Some("blue"),
        attachments: &[("timeout", "3000"), ("user", "alice")],
        args: Args::Encoded {
            types: "ILjava/lang/String;[B",
            values: &args,
        },
        ..RequestFrame::new(id, "com.example.DemoService", "sayHello")
    }
    .encode()
}

/// A request whose single `byte[]` argument has `n` bytes.
pub fn payload_request(id: u64, n: usize) -> Bytes {
    RequestFrame {
        version: "1.0.0",
        group: Some("blue"),
        attachments: &[("timeout", "3000"), ("user", "alice")],
        args: Args::Binary(n),
        ..RequestFrame::new(id, "com.example.DemoService", "upload")
    }
    .encode()
}
