//! Criterion benches of the thrift codec.
//!
//! - `decode_framed_binary/<payload>`: metadata decode of a framed/binary call (100 B,
//!   4 KiB, 1 MiB payload): should be flat in the payload size.
//! - `thrift_crate_full_decode/<payload>`: the same message decoded in full by the Rust
//!   `thrift` crate (read the message header and the argument struct, copying the payload).
//! - `encode_framed_binary/<payload>`: re-encode with a rewritten sequence id (a copy).
//! - `decode_header_compact`: a THeader/compact call with 4 info headers.
//! - `unframed_skip/<protocol>`: delimiting an unframed ~1 MiB nested message by
//!   skipping it (throughput in bytes/s), and `thrift_crate_skip/<protocol>`: the
//!   `thrift` crate's `skip` over the same bytes.
//!
//! Run: `cargo bench -p metaproxy-thrift -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meta_protocol::Codec;
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport};
use thrift::protocol::{TBinaryInputProtocol, TCompactInputProtocol, TInputProtocol, TType};
use thrift::transport::TFramedReadTransport;

const SIZES: [(usize, &str); 3] = [(100, "100B"), (4096, "4KiB"), (1 << 20, "1MiB")];

/// A BytesMut holding `frame`, already shareable (as a connection buffer is after its
/// first frame), so the timed decode measures the steady state.
fn buffer(frame: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(frame.len());
    b.extend_from_slice(frame);
    let _ = b.split_to(0);
    b
}

fn decode_framed(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_framed_binary");
    for (size, label) in SIZES {
        let frame = frames::call_frame(
            &FrameSpec::new(Transport::Framed, Protocol::Binary, "put", 7),
            size,
        )
        .unwrap();
        let mut codec = ThriftCodec::new(Some(Transport::Framed), Some(Protocol::Binary), 16 << 20);
        g.bench_function(label, |b| {
            b.iter_batched_ref(
                || buffer(&frame),
                |buf| codec.decode(buf),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // A multiplexed name adds the `service` key (two more slices of the frame).
    let frame = frames::call_frame(
        &FrameSpec::new(Transport::Framed, Protocol::Binary, "Store:put", 7),
        100,
    )
    .unwrap();
    let mut codec = ThriftCodec::new(Some(Transport::Framed), Some(Protocol::Binary), 16 << 20);
    c.bench_function("decode_framed_binary_multiplexed/100B", |b| {
        b.iter_batched_ref(
            || buffer(&frame),
            |buf| codec.decode(buf),
            BatchSize::SmallInput,
        )
    });

    let mut g = c.benchmark_group("thrift_crate_full_decode");
    for (size, label) in SIZES {
        let frame = frames::call_frame(
            &FrameSpec::new(Transport::Framed, Protocol::Binary, "put", 7),
            size,
        )
        .unwrap();
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut i = TBinaryInputProtocol::new(TFramedReadTransport::new(&frame[..]), true);
                let id = i.read_message_begin().unwrap();
                i.read_struct_begin().unwrap();
                let mut payload = Vec::new();
                loop {
                    let f = i.read_field_begin().unwrap();
                    match (f.field_type, f.id) {
                        (TType::Stop, _) => break,
                        (TType::String, Some(1)) => payload = i.read_bytes().unwrap(),
                        (t, _) => i.skip(t).unwrap(),
                    }
                    i.read_field_end().unwrap();
                }
                i.read_struct_end().unwrap();
                i.read_message_end().unwrap();
                black_box((id, payload))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode_framed_binary");
    for (size, label) in SIZES {
        let frame = frames::call_frame(
            &FrameSpec::new(Transport::Framed, Protocol::Binary, "Store:put", 7),
            size,
        )
        .unwrap();
        let mut codec = ThriftCodec::new(None, None, 16 << 20);
        let mut msg = codec.decode(&mut buffer(&frame)).unwrap().unwrap();
        msg.set_request_id(123_456);
        let mut out = BytesMut::with_capacity(frame.len() + 16);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                codec.encode(&msg, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();

    let headers = [
        ("tenant", "acme"),
        ("trace-id", "0123456789abcdef"),
        ("user", "alice"),
        ("zone", "eu-1"),
    ];
    let spec =
        FrameSpec::new(Transport::Header, Protocol::Compact, "Store:put", 7).with_headers(&headers);
    let mut frame = BytesMut::new();
    frames::write_call(&spec, &[b'x'; 512], &mut frame).unwrap();
    let mut codec = ThriftCodec::new(Some(Transport::Header), Some(Protocol::Compact), 16 << 20);
    c.bench_function("decode_header_compact", |b| {
        b.iter_batched_ref(
            || buffer(&frame),
            |buf| codec.decode(buf),
            BatchSize::SmallInput,
        )
    });
}

/// An unframed call whose argument struct is a ~1 MiB list of nested structs with
/// every common type (written with our frame writer for the head, then raw fields).
fn nested_message(p: Protocol) -> Vec<u8> {
    let mut b = BytesMut::new();
    frames::write_call(
        &FrameSpec::new(Transport::Unframed, p, "put", 1),
        b"",
        &mut b,
    )
    .unwrap();
    // Drop field 1 (empty binary) and the stop byte: keep only the message header.
    let keep = b.len() - if p == Protocol::Binary { 8 } else { 3 };
    b.truncate(keep);
    let n = 12_000u32;
    match p {
        Protocol::Binary => {
            b.put_u8(15);
            b.put_i16(1);
            b.put_u8(12);
            b.put_u32(n);
            for i in 0..n {
                b.put_u8(8);
                b.put_i16(1);
                b.put_u32(i);
                b.put_u8(11);
                b.put_i16(2);
                b.put_u32(24);
                b.put_slice(&[b'l'; 24]);
                b.put_u8(4);
                b.put_i16(3);
                b.put_f64(1.5);
                b.put_u8(2);
                b.put_i16(4);
                b.put_u8(1);
                b.put_u8(15);
                b.put_i16(5);
                b.put_u8(10);
                b.put_u32(4);
                for j in 0..4u64 {
                    b.put_u64(j);
                }
                b.put_u8(13);
                b.put_i16(6);
                b.put_u8(11);
                b.put_u8(8);
                b.put_u32(1);
                b.put_u32(1);
                b.put_u8(b'k');
                b.put_u32(7);
                b.put_u8(0);
            }
            b.put_u8(0);
        }
        Protocol::Compact => {
            b.put_u8(0x19);
            b.put_u8(0xfc);
            let mut v = n;
            while v >= 0x80 {
                b.put_u8((v as u8) | 0x80);
                v >>= 7;
            }
            b.put_u8(v as u8);
            for i in 0..n {
                b.put_u8(0x15);
                let mut z = (i << 1) as u64;
                while z >= 0x80 {
                    b.put_u8((z as u8) | 0x80);
                    z >>= 7;
                }
                b.put_u8(z as u8);
                b.put_u8(0x18);
                b.put_u8(24);
                b.put_slice(&[b'l'; 24]);
                b.put_u8(0x17);
                b.put_f64_le(1.5);
                b.put_u8(0x11);
                b.put_u8(0x19);
                b.put_u8(0x46);
                for j in 0..4u8 {
                    b.put_u8(j * 2);
                }
                b.put_u8(0x1b);
                b.put_u8(1);
                b.put_u8(0x85);
                b.put_u8(1);
                b.put_u8(b'k');
                b.put_u8(14);
                b.put_u8(0);
            }
            b.put_u8(0);
        }
    }
    b.to_vec()
}

fn unframed(c: &mut Criterion) {
    let mut g = c.benchmark_group("unframed_skip");
    for p in Protocol::ALL {
        let msg = nested_message(p);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        let mut codec = ThriftCodec::new(Some(Transport::Unframed), Some(p), 16 << 20);
        // Check once that the whole message is found.
        let m = codec
            .decode(&mut buffer(&msg))
            .unwrap()
            .expect("whole message");
        assert_eq!(m.frame().len(), msg.len());
        g.bench_function(p.as_str(), |b| {
            b.iter_batched_ref(
                || buffer(&msg),
                |buf| codec.decode(buf),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("thrift_crate_skip");
    for p in Protocol::ALL {
        let msg = nested_message(p);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(p.as_str(), |b| {
            b.iter(|| {
                let mut i: Box<dyn TInputProtocol> = match p {
                    Protocol::Binary => Box::new(TBinaryInputProtocol::new(&msg[..], true)),
                    Protocol::Compact => Box::new(TCompactInputProtocol::new(&msg[..])),
                };
                let id = i.read_message_begin().unwrap();
                i.skip(TType::Struct).unwrap();
                black_box(id)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_framed, unframed);
criterion_main!(benches);
