//! Decodes the benchmark's typical request N times (default 100000): a steady loop for
//! instruction counting (`valgrind --tool=callgrind`) and profiling (`perf record`),
//! which give repeatable figures on a busy machine where wall-clock benches do not.

use bytes::BytesMut;
use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_dubbo::hessian2::Writer;
use metaproxy_dubbo::DubboCodec;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut args = BytesMut::new();
    Writer::new(&mut args)
        .write_int(42)
        .write_string("hello world")
        .write_binary(&[7u8; 100]);
    let frame = RequestFrame {
        version: "1.0.0",
        group: Some("blue"),
        attachments: &[("timeout", "3000"), ("user", "alice")],
        args: Args::Encoded {
            types: "ILjava/lang/String;[B",
            values: &args,
        },
        ..RequestFrame::new(1, "com.example.DemoService", "sayHello")
    }
    .encode();
    let mut buf = BytesMut::with_capacity(frame.len() * n);
    for _ in 0..n {
        buf.extend_from_slice(&frame);
    }
    let mut codec = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
    let mut keys = 0;
    let start = std::time::Instant::now();
    while let Ok(Some(msg)) = codec.decode(&mut buf) {
        keys += msg.metadata().len();
    }
    let took = start.elapsed();
    println!(
        "{n} decodes, {keys} metadata entries, {:?} per decode",
        took / n as u32
    );
}
