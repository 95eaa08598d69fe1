//! A stable-Rust fuzz harness: a few hundred thousand inputs mutated from valid frames,
//! bounded in time. Checks that decoding never panics, that whatever decodes encodes
//! back to the same bytes, and that a mutated re-encode decodes with the mutation.
//! (The coverage-guided target is in `fuzz/`; see the README.) For the full 300 000
//! inputs run it optimised: `cargo test --release -p metaproxy-dubbo --test fuzzish`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{object_in_attachments, one_way_request, payload_request, seed_args, typical_request};
use meta_protocol::testing::FuzzRng;
use meta_protocol::{Codec, MessageKind, Side};
use metaproxy_dubbo::frames::{Args, RequestFrame, ResponseFrame};
use metaproxy_dubbo::hessian2::Reader;
use metaproxy_dubbo::DubboCodec;

fn seeds() -> Vec<Bytes> {
    let args = seed_args();
    vec![
        typical_request(1),
        payload_request(2, 100),
        payload_request(3, 1500),
        RequestFrame {
            args: Args::Encoded {
                types: "Ljava/util/List;Ljava/util/Map;Ljava/lang/String;",
                values: &args,
            },
            attachments: &[("k", "\u{1F600}v")],
            ..RequestFrame::new(4, "svc", "m")
        }
        .encode(),
        one_way_request(5),
        object_in_attachments(12, "alice"),
        ResponseFrame::string(6, "ok")
            .with_attachments(&[("a", "b")])
            .encode(),
        ResponseFrame::value(7, &args[..args.len() - 20]).encode(),
        ResponseFrame::exception(8, b"N")
            .with_attachments(&[])
            .encode(),
        ResponseFrame::error(9, 60, "no route").encode(),
        Bytes::from_static(b"\xda\xbb\xe2\x00\0\0\0\0\0\0\0\x05\0\0\0\x01N"),
        Bytes::from_static(b"\xda\xbb\xa2\x00\0\0\0\0\0\0\0\x05\0\0\0\x02\x01R"),
    ]
}

const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x1f, 0x30, 0x33, 0x34, 0x41, 0x42, 0x43, 0x48, 0x4d, 0x4e, 0x4f, 0x51, 0x52, 0x53,
    0x55, 0x56, 0x57, 0x58, 0x5a, 0x60, 0x6f, 0x70, 0x78, 0x7f, 0x80, 0xbf, 0xc0, 0xd7, 0xed, 0xf0,
    0xff,
];

fn mutate(rng: &mut FuzzRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = 16.min(len - 1) + rng.below(len.saturating_sub(16));
                if i < len {
                    v[i] = INTERESTING[rng.below(INTERESTING.len())];
                }
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 17 => {
                let i = 16 + rng.below(len - 16);
                let n = 1 + rng.below(8).min(len - i - 1);
                v.drain(i..i + n);
            }
            4 if len > 20 => {
                // duplicate a slice of the body
                let a = 16 + rng.below(len - 16);
                let b = (a + 1 + rng.below(16)).min(len);
                let chunk = v[a..b].to_vec();
                let at = 16 + rng.below(len - 16);
                v.splice(at..at, chunk);
            }
            5 => v.truncate(rng.below(len + 1)),
            _ => {}
        }
    }
    // Mostly keep the header's body length consistent so the body parser is exercised.
    if v.len() >= 16 && rng.below(8) != 0 {
        let body = (v.len() - 16) as u32;
        v[12..16].copy_from_slice(&body.to_be_bytes());
    }
    v
}

fn check(input: &[u8]) {
    for side in [Side::Downstream, Side::Upstream] {
        let mut c = DubboCodec::new(side, 1 << 20);
        let mut buf = BytesMut::from(input);
        let Ok(Some(mut msg)) = c.decode(&mut buf) else {
            continue;
        };
        let consumed = input.len() - buf.len();
        let mut out = BytesMut::new();
        c.encode(&msg, &mut out).unwrap();
        assert_eq!(&out[..], &input[..consumed], "re-encode differs");
        let mutable = match msg.kind() {
            MessageKind::Request | MessageKind::OneWay => true,
            MessageKind::Response => msg.metadata().iter().count() > 0,
            _ => false,
        };
        msg.push_mutation("x-fuzz".into(), "\u{1F600}".into());
        // A key the seeds already carry: the mutation must replace it.
        msg.push_mutation("user".into(), "mutated".into());
        out.clear();
        c.encode(&msg, &mut out).unwrap();
        if mutable && msg.kind() != MessageKind::Response {
            let back = c
                .decode(&mut out)
                .expect("mutated frame decodes")
                .expect("whole");
            assert_eq!(back.metadata().get("x-fuzz"), Some("\u{1F600}"));
            assert_eq!(back.metadata().get("user"), Some("mutated"));
            assert_eq!(
                back.metadata().get("interface"),
                msg.metadata().get("interface")
            );
        }
    }
    let body = Bytes::copy_from_slice(input.get(16..).unwrap_or_default());
    let _ = Reader::new(&body).read_value();
    let mut r = Reader::new(&body);
    while !r.is_at_end() && r.skip_value().is_ok() {}
}

#[test]
fn mutated_frames_never_panic_and_round_trip() {
    let seeds = seeds();
    for s in &seeds {
        check(s);
    }
    let mut rng = FuzzRng::new(0x9e37_79b9_7f4a_7c15);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut runs = 0u64;
    while runs < 300_000 && Instant::now() < deadline {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("failing input after {runs} runs: {hex}\n{e:?}");
        }
        runs += 1;
    }
    eprintln!("fuzzish: {runs} inputs");
    // Debug builds on a busy machine get through fewer; `--release` runs all 300 000.
    assert!(runs >= 2_000, "too few inputs in the time bound: {runs}");
}
