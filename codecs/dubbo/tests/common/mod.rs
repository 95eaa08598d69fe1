//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use meta_protocol::{Codec, Message, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::RequestFrame;
use metaproxy_dubbo::header::{Header, HEADER_LEN};
use metaproxy_dubbo::hessian2::Writer;
use metaproxy_dubbo::DubboCodec;

#[path = "requests.rs"]
mod requests;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use requests::{payload_request, typical_request};
#[path = "seed_args.rs"]
mod seed_args;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use seed_args::seed_args;

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

/// A request header alone (no body bytes).
pub fn request_header(flags: u8, id: u64, body_len: i32) -> BytesMut {
    let mut b = BytesMut::new();
    Header {
        flags,
        status: 0,
        id,
        body_len,
    }
    .write(&mut b);
    b
}

/// Builds a request frame by hand from hessian pieces: body strings, raw args, raw
/// attachments map (or none).
pub fn raw_request(flags: u8, id: u64, build: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    let mut b = request_header(flags, id, 0);
    build(&mut Writer::new(&mut b));
    let len = (b.len() - HEADER_LEN) as u32;
    b[12..16].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// A one-way request with id `id` to `svc.m`, without arguments.
pub fn one_way_request(id: u64) -> Bytes {
    RequestFrame {
        one_way: true,
        ..RequestFrame::new(id, "svc", "m")
    }
    .encode()
}

/// A request whose attachments map holds `user` and an object of the class `com.a.P`
/// defined in the arguments: the map cannot be walked without the arguments' classes.
pub fn object_in_attachments(id: u64, user: &str) -> Bytes {
    raw_request(0xc2, id, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("Lcom/a/P;");
        let idx = w.write_class_def("com.a.P", &["x"]);
        w.write_object_start(idx).write_int(1);
        w.write_map_start(None);
        w.write_string("user").write_string(user);
        w.write_string("obj");
        w.write_object_start(idx).write_int(2);
        w.write_end();
    })
}
