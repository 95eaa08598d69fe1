//! The stable harness of the runtime-level fuzz target (cargo-fuzz needs nightly):
//! mutated and random byte streams through full downstream sessions of a running proxy
//! (see `common/session_fuzz.rs` for what each session checks). Valid Dubbo, Thrift
//! (every transport and protocol) and kv request streams are mutated with bit flips,
//! interesting bytes, inserts, deletes, truncations, length tweaks and splices.
//! Budget: about 6 seconds (override with METAPROXY_FUZZ_SECS), deterministic seed
//! (override with METAPROXY_FUZZ_SEED).

#[path = "common/session_fuzz.rs"]
mod session_fuzz;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use meta_protocol::testing::FuzzRng;
use metaproxy::thrift::frames::{write_call, write_oneway, FrameSpec};
use metaproxy::thrift::{Protocol, Transport};
use session_fuzz::{valid_request, Proto, SessionFuzz};

/// Valid streams, each prefixed with its listener selector (0 Dubbo, 1 Thrift, 2 kv).
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut dubbo = vec![0u8];
    for id in 1..4 {
        dubbo.extend_from_slice(&valid_request(Proto::Dubbo, id));
    }
    // A heartbeat (event, two-way, null body).
    dubbo.extend_from_slice(&[
        0xda, 0xbb, 0xe2, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, b'N',
    ]);
    out.push(dubbo);
    for t in Transport::ALL {
        for p in Protocol::ALL {
            let mut b = BytesMut::from(&[1u8][..]);
            let headers = [("tenant", "acme")];
            let spec = FrameSpec::new(t, p, "Svc:echo", 5).with_headers(&headers);
            write_call(&spec, b"payload", &mut b).unwrap();
            write_oneway(&spec, b"", &mut b).unwrap();
            write_call(&FrameSpec::new(t, p, "echo", 6), b"", &mut b).unwrap();
            out.push(b.to_vec());
        }
    }
    let mut kv = vec![2u8];
    for id in 1..4 {
        kv.extend_from_slice(&valid_request(Proto::Kv, id));
    }
    kv.extend_from_slice(&metaproxy_example_kv::frames::heartbeat(9));
    out.push(kv);
    out
}

fn mutate(rng: &mut FuzzRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    // Keep the selector, vary the chunking bits.
    data[0] = (data[0] % 3) | ((rng.below(8) as u8) << 2);
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xda, 0xbb, 0x0f];
    for _ in 0..1 + rng.below(4) {
        if data.len() < 2 {
            break;
        }
        let at = 1 + rng.below(data.len() - 1);
        match rng.below(8) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => data.insert(at, rng.next() as u8),
            3 => {
                data.remove(at);
            }
            4 => data.truncate(at),
            5 => {
                // Length-like tweak: a big-endian u32 at `at`.
                let v = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 65_537][rng.below(5)];
                for (i, b) in v.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = data.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = 1 + rng.below(other.len().saturating_sub(1).max(1));
                data.extend_from_slice(&other[from.min(other.len())..]);
            }
            _ => {
                let n = rng.below(64);
                data.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    data
}

#[test]
fn random_byte_streams_through_full_sessions_hold_the_invariants() {
    let secs: u64 = std::env::var("METAPROXY_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("METAPROXY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let harness = SessionFuzz::new();
    let seeds = seeds();
    // The valid seeds pass first.
    for s in &seeds {
        harness.session(s);
    }
    harness.check_healthy();
    let mut rng = FuzzRng::new(seed);
    let started = Instant::now();
    let mut sessions = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let data = if rng.below(8) == 0 {
            // Pure noise.
            let n = rng.below(512);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&mut rng, &seeds)
        };
        harness.session(&data);
        sessions += 1;
    }
    harness.check_healthy();
    eprintln!("{sessions} fuzzed sessions in {:?}", started.elapsed());
    assert!(sessions > 100, "only {sessions} sessions ran");
}
