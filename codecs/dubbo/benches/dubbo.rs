//! Decode and encode costs of the Dubbo codec.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_dubbo::hessian2::Writer;
use metaproxy_dubbo::DubboCodec;

fn typical_request() -> Bytes {
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
        ..RequestFrame::new(1, "com.example.DemoService", "sayHello")
    }
    .encode()
}

fn payload_request(n: usize) -> Bytes {
    RequestFrame {
        version: "1.0.0",
        group: Some("blue"),
        attachments: &[("timeout", "3000"), ("user", "alice")],
        args: Args::Binary(n),
        ..RequestFrame::new(1, "com.example.DemoService", "upload")
    }
    .encode()
}

/// A read buffer refilled with 64 copies of `frame` when empty, and reused (as a
/// connection's read buffer is): each decode pays for one copy of its frame, as it would
/// after a socket read.
struct Feed {
    frame: Bytes,
    buf: BytesMut,
}

impl Feed {
    fn new(frame: Bytes) -> Self {
        let buf = BytesMut::with_capacity(frame.len() * 64);
        Feed { frame, buf }
    }
    fn next(&mut self) -> &mut BytesMut {
        if self.buf.is_empty() {
            self.buf.clear();
            for _ in 0..64 {
                self.buf.extend_from_slice(&self.frame);
            }
        }
        &mut self.buf
    }
}

fn decode(c: &mut Criterion) {
    let mut codec = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
    let mut g = c.benchmark_group("decode");
    let mut feed = Feed::new(typical_request());
    g.bench_function("typical_request_3_args_6_attachments", |b| {
        b.iter(|| {
            let msg = codec.decode(feed.next()).unwrap().unwrap();
            black_box(msg.metadata().len())
        })
    });
    for (name, n) in [
        ("payload_100B", 100),
        ("payload_4KiB", 4096),
        ("payload_64KiB", 65536),
    ] {
        let frame = payload_request(n);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut feed = Feed::new(frame);
        g.bench_function(name, |b| {
            b.iter(|| {
                let msg = codec.decode(feed.next()).unwrap().unwrap();
                black_box(msg.metadata().len())
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut codec = DubboCodec::new(Side::Upstream, DEFAULT_MAX_FRAME_SIZE);
    let mut buf = BytesMut::from(&typical_request()[..]);
    let mut msg = codec.decode(&mut buf).unwrap().unwrap();
    let mut g = c.benchmark_group("encode");
    msg.set_request_id(12345);
    let mut out = BytesMut::with_capacity(1 << 16);
    g.bench_function("id_rewrite", |b| {
        b.iter(|| {
            out.clear();
            codec.encode(black_box(&msg), &mut out).unwrap();
        })
    });
    let mut mutated = msg.clone();
    mutated.push_mutation("x-route".into(), "beta".into());
    mutated.push_mutation("user".into(), "bob".into());
    g.bench_function("request_mutation_2_keys", |b| {
        b.iter(|| {
            out.clear();
            codec.encode(black_box(&mutated), &mut out).unwrap();
        })
    });
    g.bench_function("decode_then_mutate_encode", |b| {
        let frame = typical_request();
        b.iter_batched(
            || BytesMut::from(&frame[..]),
            |mut src| {
                let mut m = codec.decode(&mut src).unwrap().unwrap();
                m.push_mutation("x-route".into(), "beta".into());
                out.clear();
                codec.encode(&m, &mut out).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
