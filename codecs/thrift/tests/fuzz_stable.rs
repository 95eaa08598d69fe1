//! A bounded randomized fuzz harness for stable Rust (cargo-fuzz needs nightly): it
//! mutates valid frames of every transport × protocol (and `thrift`-crate messages)
//! with bit flips, interesting bytes, inserts, deletes, truncations, length tweaks and
//! splices, and runs the fuzz target's invariants on each (`common/fuzz_check.rs`).
//! Budget: about 4 seconds (override with THRIFT_FUZZ_SECS), deterministic seed
//! (override with THRIFT_FUZZ_SEED).

mod common;
#[path = "common/fuzz_check.rs"]
mod fuzz_check;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use meta_protocol::testing::FuzzRng;
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, Transport};
use thrift::protocol::TMessageType;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in Transport::ALL {
        for p in Protocol::ALL {
            let headers = [("tenant", "acme"), ("k", "")];
            let spec = FrameSpec::new(t, p, "Svc:method", 300).with_headers(&headers);
            let mut b = BytesMut::new();
            frames::write_call(&spec, b"payload bytes", &mut b).unwrap();
            out.push(b.to_vec());
            let mut b = BytesMut::new();
            frames::write_oneway(&spec, b"", &mut b).unwrap();
            out.push(b.to_vec());
            let mut b = BytesMut::new();
            frames::write_reply(&spec, b"ok", &mut b).unwrap();
            frames::write_declared_exception(&spec, 2, "nope", &mut b).unwrap();
            frames::write_app_exception_frame(&spec, 6, "boom", &mut b).unwrap();
            out.push(b.to_vec());
        }
    }
    let nested = vec![
        (
            1,
            V::Struct(vec![
                (1, V::List(Ty::Bool, vec![V::Bool(true), V::Bool(false)])),
                (2, V::Bool(true)),
            ]),
        ),
        (
            2,
            V::Map(
                Ty::Binary,
                Ty::Double,
                vec![(V::Binary(b"k".to_vec()), V::Double(1.0))],
            ),
        ),
        (3, V::Set(Ty::Uuid, vec![V::Uuid([1; 16])])),
        (300, V::I64(-1)),
    ];
    for framed in [true, false] {
        for p in RS_PROTOS {
            out.push(rs_message(framed, p, "m", TMessageType::Call, -1, &nested));
        }
    }
    out
}

fn mutate(rng: &mut FuzzRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, 0x7f, 0x80, 0x0f, 0x82, 1, 15][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                v.remove(rng.below(len));
            }
            4 => v.truncate(rng.below(len + 1)),
            5 if len >= 4 => {
                // Tweak a length-like big-endian word.
                let i = rng.below(len - 3);
                let w = u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
                let w = w.wrapping_add([1, u32::MAX, 0x100, 0x8000_0000][rng.below(4)]);
                v[i..i + 4].copy_from_slice(&w.to_be_bytes());
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                v.extend_from_slice(&other[cut..]);
            }
            _ => {
                // Duplicate a slice (deeper nesting, repeated fields).
                if len > 0 {
                    let a = rng.below(len);
                    let b = a + rng.below(len - a);
                    let chunk = v[a..b].to_vec();
                    v.splice(a..a, chunk);
                }
            }
        }
    }
    v
}

#[test]
fn randomized_mutations_of_valid_frames_hold_the_invariants() {
    let secs = std::env::var("THRIFT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed = std::env::var("THRIFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let seeds = seeds();
    let mut rng = FuzzRng::new(seed | 1);
    // Unmutated seeds must pass in every configuration.
    for s in &seeds {
        for sel in 0u8..64 {
            let mut input = vec![sel];
            input.extend_from_slice(s);
            let n = fuzz_check::check(&input);
            // Every seed decodes in the auto configuration (sel 0: auto/auto, whole input).
            assert!(sel != 0 || n > 0, "seed does not decode: {s:02x?}");
        }
    }
    let mut runs = 0u64;
    let mut messages = 0usize;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = vec![rng.next() as u8];
            input.extend(mutate(&mut rng, &seeds));
            match std::panic::catch_unwind(|| fuzz_check::check(&input)) {
                Ok(n) => messages += n,
                Err(e) => panic!(
                    "invariant violated (seed {seed:#x}, run {runs}) on input {input:02x?}: {e:?}"
                ),
            }
            runs += 1;
        }
    }
    eprintln!("thrift stable fuzz: {runs} mutated inputs in {secs} s, {messages} messages decoded and checked, no findings");
    assert!(runs > 1000, "the harness ran too few inputs ({runs})");
    assert!(
        messages as u64 > runs / 20,
        "too few mutated inputs still decode ({messages} of {runs})"
    );
}
