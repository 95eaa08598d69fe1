//! Runs one codec operation N times over the benchmark's frames: a steady loop for
//! instruction counting (`valgrind --tool=callgrind`) and profiling (`perf record`),
//! which give repeatable figures on a busy machine where wall-clock benches do not.
//!
//! `decode_loop N MODE`, MODE one of `typical` (default; 3 arguments, 6 attachments),
//! `p100`, `p4k`, `p64k` (decode of a `byte[]` payload of that size), `rewrite`
//! (encode with a new id), `mutate` (encode with a 2-key request mutation).
//! Instructions per operation = (count at 2N - count at N) / N.

use bytes::BytesMut;
use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::DubboCodec;

#[path = "../tests/common/requests.rs"]
mod requests;
use requests::{payload_request, typical_request};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mode = std::env::args().nth(2).unwrap_or_else(|| "typical".into());
    let mut codec = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
    let start = std::time::Instant::now();
    let mut work = 0usize;
    match mode.as_str() {
        "rewrite" | "mutate" => {
            let mut msg = codec
                .decode(&mut BytesMut::from(&typical_request(1)[..]))
                .unwrap()
                .unwrap();
            msg.set_request_id(99);
            if mode == "mutate" {
                msg.push_mutation("x-route".into(), "beta".into());
                msg.push_mutation("user".into(), "bob".into());
            }
            let mut out = BytesMut::with_capacity(4096);
            for _ in 0..n {
                out.clear();
                codec.encode(&msg, &mut out).unwrap();
                work += out.len();
            }
        }
        _ => {
            let frame = match mode.as_str() {
                "p100" => payload_request(1, 100),
                "p4k" => payload_request(1, 4096),
                "p64k" => payload_request(1, 65536),
                _ => typical_request(1),
            };
            // Decode from one shared buffer, refilled in slices of 64 frames (the copy
            // a socket read makes is part of the cost).
            let mut buf = BytesMut::with_capacity(frame.len() * 64);
            let mut left = n;
            while left > 0 {
                let k = left.min(64);
                buf.clear();
                for _ in 0..k {
                    buf.extend_from_slice(&frame);
                }
                while let Ok(Some(msg)) = codec.decode(&mut buf) {
                    work += msg.metadata().len();
                }
                left -= k;
            }
        }
    }
    let took = start.elapsed();
    println!(
        "{mode}: {n} operations ({work}), {:?} per operation",
        took / n.max(1) as u32
    );
}
