//! The request frames the tests, the benches and `examples/decode_loop.rs` measure
//! (included by each with `#[path]`, so all three use the same bytes).

use bytes::{Bytes, BytesMut};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_dubbo::hessian2::Writer;

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
