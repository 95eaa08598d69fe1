//! A compiled route: its conditions, targets, mirrors and per-request settings.

use std::sync::Arc;
use std::time::Duration;

use meta_protocol::{MetaStr, Metadata, Mutations};
use rand::Rng;

use crate::hash::{absorb, mix64};
use crate::matcher::Condition;

/// Seed of [`Route::hash_key`]; fixed so the hash is stable across processes.
const HASH_KEY_SEED: u64 = 0x6d65_7461_7072_6f78; // "metaprox"
/// Salt that decorrelates the sticky cluster choice from the endpoint choice made with
/// the same request hash (otherwise a 90/10 split would only ever use 90% of v1's ring).
const CLUSTER_SALT: u64 = 0x5bd1_e995_7a3c_11f1;

/// One entry of a route's target: a cluster and its weight.
#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub(crate) cluster: usize,
    pub(crate) name: Arc<str>,
    pub(crate) weight: u32,
    /// Sum of the weights up to and including this entry.
    pub(crate) cumulative: u64,
}

impl WeightedCluster {
    /// The cluster's index in [`crate::RouteTable::clusters`].
    pub fn cluster(&self) -> usize {
        self.cluster
    }

    /// The cluster's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its weight (`route.cluster` gives a single entry of weight 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// One mirror of a route: a cluster and the share of requests copied to it.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub(crate) cluster: usize,
    pub(crate) name: Arc<str>,
    pub(crate) percent: f64,
    /// A request fires when a uniform `u64` draw is below this (ignored when `always`).
    pub(crate) threshold: u64,
    pub(crate) always: bool,
}

impl Mirror {
    pub(crate) fn new(cluster: usize, name: Arc<str>, percent: f64) -> Self {
        let always = percent >= 100.0;
        // 2^64 as f64 is exact; the cast saturates, and `always` covers 100%.
        let threshold = if always {
            u64::MAX
        } else {
            (percent / 100.0 * 18_446_744_073_709_551_616.0) as u64
        };
        Mirror {
            cluster,
            name,
            percent,
            threshold,
            always,
        }
    }

    /// The mirror cluster's index in [`crate::RouteTable::clusters`].
    pub fn cluster(&self) -> usize {
        self.cluster
    }

    /// The mirror cluster's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configured share, `0..=100`.
    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// Decides whether this request is copied to the mirror: always at 100%, never at
    /// 0% (no draw is made in either case), else with probability `percent / 100`
    /// using one `u64` from `rng` (so fractions down to ~1e-17 % are honoured).
    #[inline]
    pub fn fires<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        if self.always {
            true
        } else if self.threshold == 0 {
            false
        } else {
            rng.random::<u64>() < self.threshold
        }
    }
}

/// A compiled route. Immutable; shared by every request of a config snapshot.
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    pub(crate) conditions: Box<[Condition]>,
    pub(crate) targets: Box<[WeightedCluster]>,
    pub(crate) total_weight: u64,
    pub(crate) mirrors: Box<[Mirror]>,
    pub(crate) hash_policy: Box<[Box<str>]>,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) request_mutations: Arc<Mutations>,
    pub(crate) response_mutations: Arc<Mutations>,
}

impl Route {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's name, shared (for metric labels without copying).
    pub fn name_shared(&self) -> &Arc<str> {
        &self.name
    }

    /// The route's position in its route config (`routes[index]`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether every condition of this route holds for `metadata` (no conditions: true).
    /// [`crate::RouteTable::route`] returns the first route for which this is true.
    #[inline]
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.conditions.iter().all(|c| c.holds(metadata))
    }

    /// The target clusters with their weights, in config order (one entry of weight 1
    /// for `route.cluster`).
    pub fn targets(&self) -> &[WeightedCluster] {
        &self.targets
    }

    /// Sum of the target weights (> 0).
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Picks the target cluster for one request, in proportion to the weights (a weight
    /// of 0 is never picked). Returns an index into [`crate::RouteTable::clusters`].
    /// A single-cluster route makes no draw.
    #[inline]
    pub fn pick_cluster<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.targets.len() == 1 {
            return self.targets[0].cluster;
        }
        self.cluster_at(rng.random_range(0..self.total_weight))
    }

    /// Like [`Route::pick_cluster`], but sticky when the request has a hash
    /// ([`Route::hash_key`]): the same hash always gets the same cluster (sticky canary),
    /// and hashes spread over the clusters in proportion to the weights. Without a hash
    /// it draws from `rng`. The runtime should call this one.
    #[inline]
    pub fn pick_cluster_for<R: Rng + ?Sized>(&self, hash: Option<u64>, rng: &mut R) -> usize {
        match hash {
            None => self.pick_cluster(rng),
            Some(_) if self.targets.len() == 1 => self.targets[0].cluster,
            Some(h) => {
                let x = mix64(h ^ CLUSTER_SALT);
                // Multiply-shift maps the u64 onto 0..total without modulo bias worth noting.
                let point = ((u128::from(x) * u128::from(self.total_weight)) >> 64) as u64;
                self.cluster_at(point)
            }
        }
    }

    #[inline]
    fn cluster_at(&self, point: u64) -> usize {
        self.targets
            .iter()
            .find(|t| point < t.cumulative)
            .or(self.targets.last())
            .map_or(0, |t| t.cluster)
    }

    /// The mirrors, in config order.
    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// The mirrors that fire for this request ([`Mirror::fires`] on each, in order).
    /// Allocates nothing.
    pub fn firing_mirrors<'a, R: Rng + ?Sized>(
        &'a self,
        rng: &'a mut R,
    ) -> impl Iterator<Item = &'a Mirror> + 'a {
        self.mirrors.iter().filter(move |m| m.fires(rng))
    }

    /// The `hash_policy` keys, in order.
    pub fn hash_policy(&self) -> &[Box<str>] {
        &self.hash_policy
    }

    /// The request's hash from its `hash_policy` keys: the values present, each tied
    /// to its key's position, hashed with a stable hash (same values, same hash, in
    /// every process). `None` when the route has no hash_policy or none of its keys is
    /// present (the balancer then picks at random).
    #[inline]
    pub fn hash_key(&self, metadata: &Metadata) -> Option<u64> {
        let mut h = HASH_KEY_SEED;
        let mut any = false;
        for (i, key) in self.hash_policy.iter().enumerate() {
            if let Some(v) = metadata.get(key) {
                any = true;
                h = absorb(h ^ mix64(i as u64 + 1), v.as_bytes());
            }
        }
        any.then(|| mix64(h))
    }

    /// Per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Extra attempts for requests that were never sent.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Mutations for the forwarded request, built once and shared: hand them to a
    /// message with `Message::add_shared_mutations` (a reference count, no copy).
    pub fn request_mutations(&self) -> &Arc<Mutations> {
        &self.request_mutations
    }

    /// Mutations for the returned response (same cost rules as
    /// [`Route::request_mutations`]).
    pub fn response_mutations(&self) -> &Arc<Mutations> {
        &self.response_mutations
    }
}

/// A `MetaStr` whose clones are reference-count increments: a `Bytes` built from a
/// `Vec` is promoted to a shared buffer on its first clone (one allocation), so we take
/// that first clone here, at compile time, and never per request.
pub(crate) fn shared_str(s: &str) -> MetaStr {
    let m = MetaStr::from(s.to_owned());
    let promote = m.clone();
    drop(promote);
    m
}

/// Builds [`Mutations`] from config pairs, pre-promoted (see [`shared_str`]).
pub(crate) fn build_mutations(pairs: &[(String, String)]) -> Mutations {
    pairs
        .iter()
        .map(|(k, v)| (shared_str(k), shared_str(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn mirror_zero_and_hundred_make_no_draw() {
        let mut rng = SmallRng::seed_from_u64(1);
        let before = rng.clone().random::<u64>();
        assert!(Mirror::new(0, "m".into(), 100.0).fires(&mut rng));
        assert!(!Mirror::new(0, "m".into(), 0.0).fires(&mut rng));
        assert_eq!(rng.random::<u64>(), before, "no draw was made");
    }

    #[test]
    fn mirror_fraction_fires_at_its_rate() {
        let mut rng = SmallRng::seed_from_u64(2);
        let m = Mirror::new(0, "m".into(), 0.5);
        let n = 2_000_000u32;
        let fired = (0..n).filter(|_| m.fires(&mut rng)).count() as f64;
        // Expected 10_000, sd = sqrt(n p (1-p)) ~ 99.7; allow 4 sd.
        assert!((fired - 10_000.0).abs() < 400.0, "fired {fired}");
    }

    #[test]
    fn mutations_clone_shares_the_bytes() {
        let muts = build_mutations(&[("x-route".into(), "beta".into())]);
        let c = muts.clone();
        assert_eq!(c[0].1.as_bytes().as_ptr(), muts[0].1.as_bytes().as_ptr());
        assert_eq!(&*c[0].0, "x-route");
    }
}
