//! Statistical and behavioural tests of the load balancers, with fixed seeds.

use std::collections::HashMap;

use metaproxy_router::{
    stable_hash, AllAvailable, EndpointSpec, EndpointView, LbPolicy, LoadBalancer,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PICKS: usize = 100_000;

fn eps(weights: &[u32]) -> Vec<EndpointSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| EndpointSpec::new(format!("10.0.{}.{}:20880", i / 250, i % 250), w))
        .collect()
}

/// Live state for tests: availability and in-flight counts per endpoint.
struct State {
    up: Vec<bool>,
    active: Vec<u32>,
}

impl State {
    fn new(n: usize) -> Self {
        State {
            up: vec![true; n],
            active: vec![0; n],
        }
    }
    fn down(mut self, which: &[usize]) -> Self {
        for &i in which {
            self.up[i] = false;
        }
        self
    }
}

impl EndpointView for State {
    fn len(&self) -> usize {
        self.up.len()
    }
    fn is_available(&self, i: usize) -> bool {
        self.up[i]
    }
    fn active_requests(&self, i: usize) -> u32 {
        self.active[i]
    }
}

/// Pearson chi-square of observed counts against expected probabilities.
fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .filter(|(_, &p)| p > 0.0)
        .map(|(&o, &p)| {
            let e = n as f64 * p;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// The chi-square critical value at p = 0.001: published table values up to 10
/// degrees of freedom, the Wilson-Hilferty approximation above.
fn critical(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588,
    ];
    if let Some(&v) = TABLE.get(df.wrapping_sub(1)) {
        return v;
    }
    let df = df as f64;
    let z = 3.090_232; // upper 0.1% point of the standard normal
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

fn assert_fits(counts: &[u64], probs: &[f64], what: &str) {
    let df = probs.iter().filter(|&&p| p > 0.0).count() - 1;
    let x2 = chi_square(counts, probs);
    assert!(
        x2 < critical(df),
        "{what}: chi-square {x2:.2} >= {:.2} for df {df}; counts {counts:?}",
        critical(df)
    );
    for (c, &p) in counts.iter().zip(probs) {
        if p == 0.0 {
            assert_eq!(
                *c, 0,
                "{what}: an endpoint with probability 0 was picked; counts {counts:?}"
            );
        }
    }
}

fn probs(weights: &[u32]) -> Vec<f64> {
    let total: u32 = weights.iter().sum();
    weights
        .iter()
        .map(|&w| f64::from(w) / f64::from(total))
        .collect()
}

fn count_picks(lb: &LoadBalancer, state: &impl EndpointView, seed: u64, picks: usize) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counts = vec![0u64; lb.len()];
    for _ in 0..picks {
        counts[lb.pick(None, &mut rng, state).expect("a pick")] += 1;
    }
    counts
}

#[test]
fn chi_square_critical_values_match_the_tables() {
    // Published 0.1% critical values beyond the built-in table.
    for (df, table) in [(20, 45.315), (50, 86.661), (99, 148.230)] {
        assert!(
            (critical(df) - table).abs() / table < 0.005,
            "df {df}: {} vs {table}",
            critical(df)
        );
    }
}

#[test]
fn every_policy_honours_endpoint_weights() {
    let weights = [1, 2, 3, 4];
    for policy in LbPolicy::ALL {
        let lb = LoadBalancer::new(policy, &eps(&weights)).unwrap();
        let counts = count_picks(&lb, &AllAvailable(4), 7, PICKS);
        match policy {
            LbPolicy::RoundRobin => {
                // Deterministic: 100,000 picks are 10,000 whole periods.
                assert_eq!(counts, [10_000, 20_000, 30_000, 40_000]);
            }
            LbPolicy::RingHash => {
                // Arc lengths are random: each endpoint's share is its weight's share
                // within the ring's own spread (~1/sqrt(160 * weight)).
                for (i, &c) in counts.iter().enumerate() {
                    let want = PICKS as f64 * f64::from(weights[i]) / 10.0;
                    assert!(
                        (c as f64 - want).abs() / want < 0.2,
                        "ring_hash counts {counts:?}"
                    );
                }
            }
            _ => assert_fits(&counts, &probs(&weights), policy.as_str()),
        }
    }
}

#[test]
fn many_endpoints_with_mixed_weights() {
    let weights: Vec<u32> = (0..100).map(|i| 1 + (i % 5)).collect();
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
        LbPolicy::Maglev,
    ] {
        let lb = LoadBalancer::new(policy, &eps(&weights)).unwrap();
        let counts = count_picks(&lb, &AllAvailable(100), 11, 300_000);
        assert_fits(&counts, &probs(&weights), policy.as_str());
    }
}

#[test]
fn smooth_round_robin_follows_nginx_order() {
    // nginx's documented order for weights {a: 5, b: 1, c: 1}: a a b a c a a.
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &eps(&[5, 1, 1])).unwrap();
    let mut rng = SmallRng::seed_from_u64(0);
    let seq: Vec<usize> = (0..14)
        .map(|_| lb.pick(None, &mut rng, &AllAvailable(3)).unwrap())
        .collect();
    assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    // Equal weights: plain rotation.
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &eps(&[2, 2, 2])).unwrap();
    let seq: Vec<usize> = (0..6)
        .map(|_| lb.pick(None, &mut rng, &AllAvailable(3)).unwrap())
        .collect();
    assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_is_exact_when_shared_by_threads() {
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &eps(&[5, 1, 1])).unwrap();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let lb = &lb;
                s.spawn(move || count_picks(lb, &AllAvailable(3), t, 7_000))
            })
            .collect();
        handles.into_iter().fold(vec![0u64; 3], |mut acc, h| {
            for (a, c) in acc.iter_mut().zip(h.join().unwrap()) {
                *a += c;
            }
            acc
        })
    });
    assert_eq!(counts, [20_000, 4_000, 4_000]);
}

#[test]
fn unavailable_endpoints_are_skipped_and_survivors_keep_their_weights() {
    let weights = [1, 2, 3, 4];
    let state = State::new(4).down(&[3]);
    for policy in LbPolicy::ALL {
        let lb = LoadBalancer::new(policy, &eps(&weights)).unwrap();
        let counts = count_picks(&lb, &state, 5, PICKS);
        assert_eq!(
            counts[3], 0,
            "{policy}: picked an unavailable endpoint: {counts:?}"
        );
        match policy {
            // Hash policies hand a failed endpoint's keys to fixed neighbours, not in
            // proportion to weights; they must still use every survivor.
            LbPolicy::RingHash | LbPolicy::Maglev => {
                assert!(counts[..3].iter().all(|&c| c > 0), "{counts:?}")
            }
            _ => assert_fits(
                &counts,
                &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0],
                policy.as_str(),
            ),
        }
    }
    // Only one survivor among many: every pick goes there.
    let state = State::new(20).down(&(0..20).filter(|&i| i != 13).collect::<Vec<_>>());
    for policy in LbPolicy::ALL {
        let lb = LoadBalancer::new(policy, &eps(&[1; 20])).unwrap();
        let counts = count_picks(&lb, &state, 6, 2_000);
        assert_eq!(counts[13], 2_000, "{policy}");
    }
}

#[test]
fn when_all_are_unavailable_picks_ignore_availability() {
    let weights = [1, 1, 2];
    let state = State::new(3).down(&[0, 1, 2]);
    for policy in LbPolicy::ALL {
        let lb = LoadBalancer::new(policy, &eps(&weights)).unwrap();
        let counts = count_picks(&lb, &state, 9, 40_000);
        assert!(
            counts.iter().all(|&c| c > 0),
            "{policy}: panic mode should spread: {counts:?}"
        );
        if matches!(
            policy,
            LbPolicy::RoundRobin | LbPolicy::Random | LbPolicy::Maglev
        ) {
            assert_fits(&counts, &probs(&weights), policy.as_str());
        }
        if policy.uses_hash() {
            // Same key, same endpoint as when all were healthy.
            let mut rng = SmallRng::seed_from_u64(1);
            for k in 0..1_000u64 {
                let h = stable_hash(0, &k.to_le_bytes());
                assert_eq!(
                    lb.pick(Some(h), &mut rng, &state),
                    lb.pick(Some(h), &mut rng, &AllAvailable(3))
                );
            }
        }
    }
}

fn key_hashes(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| stable_hash(42, format!("user-{i}").as_bytes()))
        .collect()
}

fn owners(lb: &LoadBalancer, hashes: &[u64], state: &impl EndpointView) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(0);
    hashes
        .iter()
        .map(|&h| lb.addresses()[lb.pick(Some(h), &mut rng, state).unwrap()].to_string())
        .collect()
}

#[test]
fn consistent_hashing_moves_about_one_nth_when_an_endpoint_leaves() {
    let keys = key_hashes(100_000);
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        for n in [5usize, 10, 20] {
            let all = eps(&vec![1; n]);
            let before_lb = LoadBalancer::new(policy, &all).unwrap();
            let before = owners(&before_lb, &keys, &AllAvailable(n));
            let leaving = all[n / 2].address.clone();
            let rest: Vec<EndpointSpec> = all
                .iter()
                .filter(|e| e.address != leaving)
                .cloned()
                .collect();
            let after_lb = LoadBalancer::new(policy, &rest).unwrap();
            let after = owners(&after_lb, &keys, &AllAvailable(n - 1));
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64
                / keys.len() as f64;
            let bound = 1.0 / n as f64 + 0.03;
            eprintln!(
                "{policy} n={n}: moved {moved:.4} (1/n = {:.4})",
                1.0 / n as f64
            );
            assert!(
                moved <= bound,
                "{policy} n={n}: moved {moved:.4} > {bound:.4}"
            );
            // Keys that lived on the leaving endpoint all moved, of course.
            assert!(before
                .iter()
                .zip(&after)
                .all(|(b, a)| b != &leaving || a != &leaving));
            if policy == LbPolicy::RingHash {
                // A ring moves only the leaving endpoint's keys.
                let strays = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| *b != &leaving && b != a)
                    .count();
                assert_eq!(strays, 0, "ring_hash n={n}");
            }
        }
    }
}

#[test]
fn an_unavailable_endpoint_moves_only_its_own_keys() {
    let keys = key_hashes(50_000);
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let lb = LoadBalancer::new(policy, &eps(&[1; 8])).unwrap();
        let before = owners(&lb, &keys, &AllAvailable(8));
        let down = lb.addresses()[3].to_string();
        let after = owners(&lb, &keys, &State::new(8).down(&[3]));
        for (b, a) in before.iter().zip(&after) {
            if b == &down {
                assert_ne!(a, &down, "{policy}");
            } else {
                assert_eq!(a, b, "{policy}: a key not on the failed endpoint moved");
            }
        }
    }
}

#[test]
fn same_key_same_endpoint() {
    let keys = key_hashes(2_000);
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let a = LoadBalancer::new(policy, &eps(&[1, 2, 3, 1, 1])).unwrap();
        let b = LoadBalancer::new(policy, &eps(&[1, 2, 3, 1, 1])).unwrap();
        let mut r1 = SmallRng::seed_from_u64(1);
        let mut r2 = SmallRng::seed_from_u64(2);
        for &h in &keys {
            let first = a.pick(Some(h), &mut r1, &AllAvailable(5));
            assert_eq!(
                first,
                a.pick(Some(h), &mut r2, &AllAvailable(5)),
                "{policy}: same balancer"
            );
            assert_eq!(
                first,
                b.pick(Some(h), &mut r2, &AllAvailable(5)),
                "{policy}: another instance"
            );
        }
        // Keys spread over every endpoint.
        let mut seen = HashMap::new();
        for &h in &keys {
            *seen
                .entry(a.pick(Some(h), &mut r1, &AllAvailable(5)).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 5, "{policy}");
    }
    // A ring places endpoints by address: reordering the list changes no key's address.
    let list = eps(&[1, 2, 3, 1, 1]);
    let mut reversed = list.clone();
    reversed.reverse();
    let a = LoadBalancer::new(LbPolicy::RingHash, &list).unwrap();
    let b = LoadBalancer::new(LbPolicy::RingHash, &reversed).unwrap();
    assert_eq!(
        owners(&a, &keys, &AllAvailable(5)),
        owners(&b, &keys, &AllAvailable(5))
    );
}

#[test]
fn hash_policies_without_a_key_spread_at_random() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let lb = LoadBalancer::new(policy, &eps(&[1, 1, 1, 1])).unwrap();
        let counts = count_picks(&lb, &AllAvailable(4), 3, 40_000);
        assert!(counts.iter().all(|&c| c > 7_000), "{policy}: {counts:?}");
    }
}

#[test]
fn least_request_prefers_the_less_loaded() {
    // Two equal endpoints, one busy: it wins only when both draws land on it (1/4).
    let lb = LoadBalancer::new(LbPolicy::LeastRequest, &eps(&[1, 1])).unwrap();
    let mut state = State::new(2);
    state.active = vec![10, 0];
    let counts = count_picks(&lb, &state, 1, PICKS);
    assert_fits(&counts, &[0.25, 0.75], "p2c 2 endpoints");

    // Three endpoints with loads 0 < 5 < 10: the best of two uniform draws.
    let lb = LoadBalancer::new(LbPolicy::LeastRequest, &eps(&[1, 1, 1])).unwrap();
    let mut state = State::new(3);
    state.active = vec![0, 5, 10];
    let counts = count_picks(&lb, &state, 2, PICKS);
    assert_fits(
        &counts,
        &[5.0 / 9.0, 3.0 / 9.0, 1.0 / 9.0],
        "p2c 3 endpoints",
    );

    // Load is compared per unit of weight: 2 in flight on weight 3 beats 1 on weight 1,
    // so endpoint 0 wins only when drawn twice: (1/4)^2.
    let lb = LoadBalancer::new(LbPolicy::LeastRequest, &eps(&[1, 3])).unwrap();
    let mut state = State::new(2);
    state.active = vec![1, 2];
    let counts = count_picks(&lb, &state, 3, PICKS);
    assert_fits(&counts, &[1.0 / 16.0, 15.0 / 16.0], "p2c weighted");

    // Equal load per weight is a tie: the weights decide.
    state.active = vec![1, 3];
    let counts = count_picks(&lb, &state, 4, PICKS);
    assert_fits(&counts, &[0.25, 0.75], "p2c weighted tie");
}

#[test]
fn balancers_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LoadBalancer>();
    assert_send_sync::<metaproxy_router::RouteTable>();
    let lb = LoadBalancer::new(LbPolicy::Maglev, &eps(&[1, 1, 1])).unwrap();
    std::thread::scope(|s| {
        for t in 0..2 {
            let lb = &lb;
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                for _ in 0..1_000 {
                    let h: u64 = rng.random();
                    assert!(lb.pick(Some(h), &mut rng, &AllAvailable(3)).is_some());
                }
            });
        }
    });
}
