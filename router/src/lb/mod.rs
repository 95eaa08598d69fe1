//! Load balancers: pick an endpoint of a cluster for one request.
//!
//! A [`LoadBalancer`] is built once per cluster per config snapshot from the endpoint
//! list and is then shared (`&self`, `Send + Sync`) by every thread. Live state
//! (ejection, reachability, in-flight requests) is not stored here: each pick reads it
//! through an [`EndpointView`] that the runtime implements over its own counters.
//!
//! ## Unavailable endpoints and panic mode
//! Every policy skips endpoints that the view reports unavailable:
//! - round_robin: the scheduled endpoint, or when it is unavailable a weighted random
//!   choice among the available ones (so the survivors keep their relative weights);
//! - random / least_request: weighted draws, redrawn up to 8 times, then one weighted
//!   pass over the available endpoints;
//! - ring_hash: walks clockwise to the next point of an available endpoint (exactly
//!   what removing the unavailable endpoints from the ring would give), up to 64
//!   points, then a hash-keyed weighted choice among the available ones;
//! - maglev: up to 8 further hash-derived table slots, then the same hash-keyed choice.
//!
//! When **no** endpoint is available the balancer picks as if all were (Envoy's panic
//! mode): sending to a possibly-unhealthy endpoint beats failing every request, and an
//! ejected endpoint may have recovered. `pick` returns `None` only for a cluster with no
//! endpoints.

mod maglev;
mod ring;
mod sampler;
mod schedule;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::Rng;

use crate::error::{RouterError, RouterErrorKind};
use crate::hash::mix64;
use maglev::{Maglev, MAGLEV_TABLE_SIZE};
use ring::Ring;
use sampler::WeightedSampler;
use schedule::Schedule;

/// Weighted redraws before a pass over all endpoints.
const RANDOM_TRIES: usize = 8;
/// Ring points walked before a pass over all endpoints.
const RING_PROBES: usize = 64;
/// Extra maglev slots tried before a pass over all endpoints.
const MAGLEV_PROBES: u64 = 8;

/// A cluster's `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LbPolicy {
    /// Smooth weighted round robin (nginx's order), lock-free.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on in-flight requests (divided by weight).
    LeastRequest,
    /// Ketama-style consistent-hash ring keyed by the request hash.
    RingHash,
    /// Maglev lookup table (65,537 slots) keyed by the request hash.
    Maglev,
}

impl LbPolicy {
    /// Every policy, in the order docs/CONFIG.md lists them.
    pub const ALL: [LbPolicy; 5] = [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
    ];

    /// The config name: `round_robin`, `random`, `least_request`, `ring_hash`, `maglev`.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }

    /// Whether the policy uses the request hash (ring_hash, maglev).
    pub fn uses_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

impl fmt::Display for LbPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LbPolicy {
    type Err = RouterError;

    /// Parses a config name; the error's path is `lb_policy`.
    fn from_str(s: &str) -> Result<Self, RouterError> {
        LbPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                RouterError::new("lb_policy", RouterErrorKind::UnknownPolicy(s.to_owned()))
            })
    }
}

/// One endpoint of a cluster as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// `host:port`. Consistent hashing (ring_hash, maglev) places endpoints by this
    /// string, so an endpoint keeps its keys whatever its position in the list.
    pub address: String,
    /// Relative weight, at least 1 (default 1).
    pub weight: u32,
}

impl EndpointSpec {
    /// An endpoint at `address` with `weight`.
    pub fn new(address: impl Into<String>, weight: u32) -> Self {
        EndpointSpec {
            address: address.into(),
            weight,
        }
    }
}

/// The live state of a cluster's endpoints, in the same order as the
/// [`EndpointSpec`]s the balancer was built from. Implemented by the runtime over its
/// own atomics; must be cheap (it is read several times per pick).
pub trait EndpointView {
    /// Number of endpoints described. Indices at or past this are treated as
    /// unavailable (and as infinitely loaded).
    fn len(&self) -> usize;

    /// Whether there are no endpoints.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether endpoint `i` may receive requests: not ejected by outlier detection and
    /// not known to be unreachable.
    fn is_available(&self, i: usize) -> bool;

    /// Requests currently in flight to endpoint `i` (for least_request).
    fn active_requests(&self, i: usize) -> u32;
}

/// An [`EndpointView`] of `n` endpoints, all available and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllAvailable(pub usize);

impl EndpointView for AllAvailable {
    fn len(&self) -> usize {
        self.0
    }
    fn is_available(&self, i: usize) -> bool {
        i < self.0
    }
    fn active_requests(&self, _i: usize) -> u32 {
        0
    }
}

#[derive(Debug)]
enum Kind {
    RoundRobin(Schedule),
    Random,
    LeastRequest,
    RingHash(Ring),
    Maglev(Maglev),
}

/// One cluster's endpoint picker. Immutable apart from the round-robin cursor (an
/// atomic); share it by reference or `Arc` across threads.
#[derive(Debug)]
pub struct LoadBalancer {
    policy: LbPolicy,
    addresses: Box<[Arc<str>]>,
    weights: Box<[u32]>,
    sampler: WeightedSampler,
    kind: Kind,
}

impl LoadBalancer {
    /// Builds the balancer for `endpoints` (an empty list is allowed: every pick is
    /// `None`). Errors, with paths relative to the cluster: `endpoints[i].weight:
    /// weight must be at least 1`; `endpoints: N endpoints is more than ...` (maglev
    /// takes at most 65,536).
    pub fn new(policy: LbPolicy, endpoints: &[EndpointSpec]) -> Result<Self, RouterError> {
        if let Some(i) = endpoints.iter().position(|e| e.weight == 0) {
            return Err(RouterError::new(
                format!("endpoints[{i}].weight"),
                RouterErrorKind::ZeroEndpointWeight,
            ));
        }
        if policy == LbPolicy::Maglev && endpoints.len() >= MAGLEV_TABLE_SIZE {
            return Err(RouterError::new(
                "endpoints",
                RouterErrorKind::TooManyEndpoints {
                    count: endpoints.len(),
                    max: MAGLEV_TABLE_SIZE - 1,
                },
            ));
        }
        if endpoints.len() > u32::MAX as usize {
            return Err(RouterError::new(
                "endpoints",
                RouterErrorKind::TooManyEndpoints {
                    count: endpoints.len(),
                    max: u32::MAX as usize,
                },
            ));
        }
        let addresses: Box<[Arc<str>]> = endpoints
            .iter()
            .map(|e| Arc::from(e.address.as_str()))
            .collect();
        let weights: Box<[u32]> = endpoints.iter().map(|e| e.weight).collect();
        let kind = match policy {
            LbPolicy::RoundRobin => Kind::RoundRobin(Schedule::new(&weights)),
            LbPolicy::Random => Kind::Random,
            LbPolicy::LeastRequest => Kind::LeastRequest,
            LbPolicy::RingHash => Kind::RingHash(Ring::new(&addresses, &weights)),
            LbPolicy::Maglev => Kind::Maglev(Maglev::new(&addresses, &weights)),
        };
        Ok(LoadBalancer {
            policy,
            sampler: WeightedSampler::new(&weights),
            addresses,
            weights,
            kind,
        })
    }

    /// The policy.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the cluster has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Endpoint addresses, in config order.
    pub fn addresses(&self) -> &[Arc<str>] {
        &self.addresses
    }

    /// Endpoint weights, in config order.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Picks an endpoint index for one request; allocates nothing.
    ///
    /// `hash` is the request hash ([`crate::Route::hash_key`]); ring_hash and maglev use
    /// it (and draw a random key from `rng` when it is `None`), the other policies
    /// ignore it. `state` is read for availability and load; see the module docs for
    /// how unavailable endpoints are skipped and for panic mode. `None` only when the
    /// cluster has no endpoints.
    pub fn pick<R, V>(&self, hash: Option<u64>, rng: &mut R, state: &V) -> Option<usize>
    where
        R: Rng + ?Sized,
        V: EndpointView + ?Sized,
    {
        match *self.weights {
            [] => return None,
            // Every policy picks the only endpoint (weights are at least 1), available
            // or not (panic mode): no schedule step (a shared atomic increment) and no
            // random draw.
            [_] => return Some(0),
            _ => {}
        }
        match &self.kind {
            Kind::RoundRobin(s) => {
                let i = s.next()?;
                if available(state, i) {
                    return Some(i);
                }
                self.random_available(rng, state).or(Some(i))
            }
            Kind::Random => self
                .random_available(rng, state)
                .or_else(|| Some(self.sampler.sample(rng))),
            Kind::LeastRequest => Some(self.least_request(rng, state)),
            Kind::RingHash(ring) => {
                let h = hash.unwrap_or_else(|| rng.random());
                let pos = ring.position(h);
                for k in 0..RING_PROBES.min(ring.len()) {
                    let i = ring.owner(pos + k)?;
                    if available(state, i) {
                        return Some(i);
                    }
                }
                self.keyed_available(h, state).or_else(|| ring.owner(pos))
            }
            Kind::Maglev(table) => {
                let h = hash.unwrap_or_else(|| rng.random());
                let first = table.lookup(h)?;
                if available(state, first) {
                    return Some(first);
                }
                for k in 1..=MAGLEV_PROBES {
                    let i = table.lookup(mix64(h.wrapping_add(k)))?;
                    if available(state, i) {
                        return Some(i);
                    }
                }
                self.keyed_available(h, state).or(Some(first))
            }
        }
    }

    /// Power of two choices: two weighted draws among available endpoints; the one with
    /// fewer in-flight requests per unit of weight wins; on a tie the first drawn wins
    /// (so idle endpoints are chosen exactly in proportion to their weights).
    fn least_request<R, V>(&self, rng: &mut R, state: &V) -> usize
    where
        R: Rng + ?Sized,
        V: EndpointView + ?Sized,
    {
        let (a, b) = match self.random_available(rng, state) {
            Some(a) => (a, self.random_available(rng, state).unwrap_or(a)),
            // Panic mode: all unavailable, compare loads anyway.
            None => (self.sampler.sample(rng), self.sampler.sample(rng)),
        };
        if a == b {
            return a;
        }
        let load = |i: usize| {
            if i < state.len() {
                u64::from(state.active_requests(i))
            } else {
                u64::from(u32::MAX)
            }
        };
        let weight = |i: usize| u64::from(self.weights.get(i).copied().unwrap_or(1));
        // load(a) / weight(a) vs load(b) / weight(b), cross-multiplied (fits in u64).
        let la = load(a) * weight(b);
        let lb = load(b) * weight(a);
        if lb < la {
            b
        } else {
            a
        }
    }

    /// A weighted random available endpoint: a few draws, then one exact pass.
    #[inline]
    fn random_available<R, V>(&self, rng: &mut R, state: &V) -> Option<usize>
    where
        R: Rng + ?Sized,
        V: EndpointView + ?Sized,
    {
        if self.weights.len() == 1 {
            return available(state, 0).then_some(0);
        }
        for _ in 0..RANDOM_TRIES {
            let i = self.sampler.sample(rng);
            if available(state, i) {
                return Some(i);
            }
        }
        self.weighted_available(rng.random(), state)
    }

    /// A hash-keyed weighted choice among available endpoints (stable for a key while
    /// the set of available endpoints does not change).
    fn keyed_available<V: EndpointView + ?Sized>(&self, h: u64, state: &V) -> Option<usize> {
        self.weighted_available(mix64(h ^ 0xa076_1d64_78bd_642f), state)
    }

    /// Maps the uniform `x` onto the available endpoints in proportion to their weights
    /// (two passes over the endpoints); `None` when none is available.
    fn weighted_available<V: EndpointView + ?Sized>(&self, x: u64, state: &V) -> Option<usize> {
        let total: u64 = self
            .weights
            .iter()
            .enumerate()
            .filter(|&(i, _)| available(state, i))
            .map(|(_, &w)| u64::from(w))
            .sum();
        if total == 0 {
            return None;
        }
        let point = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        let mut acc = 0u64;
        let mut last = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if available(state, i) {
                acc += u64::from(w);
                last = Some(i);
                if point < acc {
                    return Some(i);
                }
            }
        }
        last
    }
}

#[inline]
fn available<V: EndpointView + ?Sized>(state: &V, i: usize) -> bool {
    i < state.len() && state.is_available(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn eps(weights: &[u32]) -> Vec<EndpointSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| EndpointSpec::new(format!("10.0.0.{i}:20880"), w))
            .collect()
    }

    #[test]
    fn policy_names_round_trip() {
        for p in LbPolicy::ALL {
            assert_eq!(p.as_str().parse::<LbPolicy>().unwrap(), p);
        }
        let e = "fastest".parse::<LbPolicy>().unwrap_err();
        assert_eq!(e.path(), "lb_policy");
    }

    #[test]
    fn zero_weight_and_empty_lists() {
        let e = LoadBalancer::new(LbPolicy::Random, &eps(&[1, 0])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "endpoints[1].weight: weight must be at least 1"
        );
        let mut rng = SmallRng::seed_from_u64(0);
        for p in LbPolicy::ALL {
            let lb = LoadBalancer::new(p, &[]).unwrap();
            assert_eq!(lb.pick(Some(1), &mut rng, &AllAvailable(0)), None, "{p}");
        }
    }

    #[test]
    fn a_state_shorter_than_the_list_never_panics() {
        let mut rng = SmallRng::seed_from_u64(0);
        for p in LbPolicy::ALL {
            let lb = LoadBalancer::new(p, &eps(&[1, 2, 3])).unwrap();
            for k in 0..100 {
                let i = lb.pick(Some(k), &mut rng, &AllAvailable(1)).unwrap();
                // Endpoint 0 is the only one the view describes, so it is the only available one.
                assert_eq!(i, 0, "{p}");
            }
        }
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        let mut rng = SmallRng::seed_from_u64(0);
        for p in LbPolicy::ALL {
            let lb = LoadBalancer::new(p, &eps(&[7])).unwrap();
            for k in 0..50 {
                assert_eq!(lb.pick(Some(k), &mut rng, &AllAvailable(1)), Some(0));
                // Unavailable (the view describes no endpoint): still the only one.
                assert_eq!(lb.pick(Some(k), &mut rng, &AllAvailable(0)), Some(0), "{p}");
            }
        }
    }

    #[test]
    fn maglev_rejects_more_endpoints_than_its_table() {
        let many: Vec<EndpointSpec> = (0..MAGLEV_TABLE_SIZE)
            .map(|i| EndpointSpec::new(format!("h{i}:1"), 1))
            .collect();
        let e = LoadBalancer::new(LbPolicy::Maglev, &many).unwrap_err();
        assert_eq!(e.path(), "endpoints");
    }
}
