//! Decode and encode costs of the Dubbo codec.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::DubboCodec;

#[path = "../tests/common/requests.rs"]
mod requests;
use requests::{payload_request, typical_request};

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
    let mut feed = Feed::new(typical_request(1));
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
        let frame = payload_request(1, n);
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
    let mut buf = BytesMut::from(&typical_request(1)[..]);
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
        let frame = typical_request(1);
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
