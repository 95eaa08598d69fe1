//! `local_rate_limit`: token buckets (GCRA, from the `governor` crate) per listener, per
//! route, or per value of a metadata key, kept in this process.

use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use meta_protocol::LocalReplyKind;
use serde::Deserialize;

use super::{
    parse_config, Filter, FilterConfigError, FilterContext, FilterFactory, FilterRequest, Verdict,
};
use crate::config::ConfigDuration;

/// The registered name of the built-in rate limiter.
pub const LOCAL_RATE_LIMIT: &str = "local_rate_limit";

/// The largest `max_keys` accepted.
pub const MAX_RATE_LIMIT_KEYS: usize = 1_000_000;

/// Default `max_keys`.
const DEFAULT_MAX_KEYS: usize = 10_000;

/// Idle buckets are swept at most this often (in nanoseconds), and only when the key
/// table is full.
const SWEEP_INTERVAL_NANOS: u64 = 1_000_000_000;

/// What one bucket is shared by.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Scope {
    /// One bucket for the whole listener.
    #[default]
    Listener,
    /// One bucket per route (the route the request would take).
    Route,
    /// One bucket per value of metadata `key`.
    Metadata,
}

/// `config:` of `local_rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitConfig {
    /// Tokens added per `per`.
    rate: u32,
    /// The refill period of `rate` tokens. Default 1s.
    #[serde(default = "one_second")]
    per: ConfigDuration,
    /// Bucket size: requests let through at once after a quiet spell. Default `rate`.
    #[serde(default)]
    burst: Option<u32>,
    /// `listener` (default), `route` or `metadata`.
    #[serde(default)]
    by: Scope,
    /// The metadata key whose value picks the bucket (with `by: metadata`).
    #[serde(default)]
    key: Option<String>,
    /// Most buckets kept with `by: route` or `by: metadata`. Default 10000.
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn one_second() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// Builds [`LocalRateLimit`] filters; registered as [`LOCAL_RATE_LIMIT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalRateLimitFactory;

impl FilterFactory for LocalRateLimitFactory {
    fn name(&self) -> &str {
        LOCAL_RATE_LIMIT
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        let c: RateLimitConfig = parse_config(config)?;
        let mut problems = Vec::new();
        let rate = NonZeroU32::new(c.rate);
        if rate.is_none() {
            problems.push(FilterConfigError::new("rate", "must be greater than 0"));
        }
        let burst = c.burst.map_or(rate, NonZeroU32::new);
        if burst.is_none() && c.burst.is_some() {
            problems.push(FilterConfigError::new("burst", "must be greater than 0"));
        }
        let period = rate.and_then(|r| c.per.get().checked_div(r.get()));
        let quota = match (period, burst) {
            (Some(p), Some(b)) => match Quota::with_period(p) {
                Some(q) => Some(q.allow_burst(b)),
                None => {
                    problems.push(FilterConfigError::new(
                        "per",
                        "must be long enough for `rate` tokens (at least 1ns each)",
                    ));
                    None
                }
            },
            _ => None,
        };
        if c.max_keys == 0 || c.max_keys > MAX_RATE_LIMIT_KEYS {
            problems.push(FilterConfigError::new(
                "max_keys",
                format!("must be within 1..={MAX_RATE_LIMIT_KEYS}"),
            ));
        }
        let key = match (c.by, c.key) {
            (Scope::Metadata, Some(k)) if !k.is_empty() => Some(k),
            (Scope::Metadata, _) => {
                problems.push(FilterConfigError::new(
                    "key",
                    "`by: metadata` needs a non-empty metadata `key`",
                ));
                None
            }
            (_, Some(_)) => {
                problems.push(FilterConfigError::new(
                    "key",
                    "only used with `by: metadata`",
                ));
                None
            }
            (_, None) => None,
        };
        let Some(quota) = quota.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        let buckets = match c.by {
            Scope::Listener => Buckets::One(RateLimiter::direct(quota)),
            Scope::Route | Scope::Metadata => Buckets::Keyed(RateLimiter::new(
                quota,
                BoundedKeys::new(c.max_keys),
                QuantaClock::default(),
            )),
        };
        Ok(Arc::new(LocalRateLimit {
            buckets,
            scope: c.by,
            key: key.map(String::into_boxed_str),
            hasher: ahash::RandomState::new(),
            text: format!(
                "metaproxy: rate limited by {} on listener {}",
                ctx.label, ctx.listener
            )
            .into(),
        }))
    }
}

type KeyedLimiter = RateLimiter<u64, BoundedKeys, QuantaClock, NoOpMiddleware<QuantaInstant>>;

enum Buckets {
    One(governor::DefaultDirectRateLimiter),
    Keyed(KeyedLimiter),
}

/// The built-in rate limiter: over the limit, a local reply `rate_limited`.
///
/// With `by: metadata` the bucket is chosen by a 64-bit hash of the value (randomly
/// keyed per filter, so clients cannot aim at a collision); requests without the key
/// are not limited. With `by: route`, requests that match no route are not limited (the
/// router answers them `no_route`).
pub struct LocalRateLimit {
    buckets: Buckets,
    scope: Scope,
    key: Option<Box<str>>,
    hasher: ahash::RandomState,
    text: Arc<str>,
}

impl LocalRateLimit {
    /// Takes a token for this request; `false` when its bucket is empty.
    #[inline]
    fn admit(&self, request: &FilterRequest<'_>) -> bool {
        match &self.buckets {
            Buckets::One(limiter) => limiter.check().is_ok(),
            Buckets::Keyed(limiter) => {
                let key = match (self.scope, &self.key) {
                    (Scope::Metadata, Some(k)) => match request.metadata().get(k) {
                        Some(value) => self.hasher.hash_one(value),
                        None => return true,
                    },
                    _ => match request.route() {
                        Some((index, _)) => metaproxy_router::mix64(index as u64),
                        None => return true,
                    },
                };
                limiter.check_key(&key).is_ok()
            }
        }
    }
}

impl Filter for LocalRateLimit {
    #[inline]
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
        if self.admit(request) {
            Verdict::Continue
        } else {
            Verdict::Reply(LocalReplyKind::RateLimited, self.text.clone())
        }
    }
}

/// One key's bucket and a copy of its theoretical arrival time (GCRA's state) that the
/// sweep reads: once the clock passes it, the bucket is full again and dropping it loses
/// nothing.
#[derive(Default)]
struct KeyBucket {
    state: InMemoryState,
    full_at: AtomicU64,
}

impl KeyBucket {
    fn measure<T, F, E>(&self, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.state.measure_and_replace(&NotKeyed::NonKey, |prev| {
            let outcome = f(prev);
            if let Ok((_, tat)) = &outcome {
                self.full_at.store(u64::from(*tat), Ordering::Relaxed);
            }
            outcome
        })
    }
}

/// Keys are already well-mixed 64-bit hashes (a keyed hash of the metadata value, a
/// mixed route index): the table uses them as they are instead of hashing them again.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A `governor` state store with at most `max_keys` buckets. When a new key finds the
/// table full, buckets that have refilled completely are swept (at most once a second);
/// if the table is still full, every key without a bucket shares one overflow bucket
/// (same quota) until room is made.
struct BoundedKeys {
    buckets: DashMap<u64, KeyBucket, BuildHasherDefault<PreHashed>>,
    len: AtomicUsize,
    max_keys: usize,
    overflow: InMemoryState,
    clock: QuantaClock,
    /// Taken just before the limiter's own start, so `now` here is never behind its.
    start: QuantaInstant,
    last_sweep: AtomicU64,
}

impl BoundedKeys {
    fn new(max_keys: usize) -> Self {
        let clock = QuantaClock::default();
        let start = clock.now();
        BoundedKeys {
            buckets: DashMap::with_hasher(BuildHasherDefault::default()),
            len: AtomicUsize::new(0),
            max_keys,
            overflow: InMemoryState::default(),
            clock,
            start,
            last_sweep: AtomicU64::new(0),
        }
    }

    /// Drops the buckets that are full again, at most once per [`SWEEP_INTERVAL_NANOS`].
    fn sweep(&self) {
        let now = u64::from(self.clock.now().duration_since(self.start));
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_INTERVAL_NANOS && last != 0 {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread sweeps
        }
        self.buckets
            .retain(|_, b| b.full_at.load(Ordering::Relaxed) > now);
        self.len.store(self.buckets.len(), Ordering::Relaxed);
    }
}

impl StateStore for BoundedKeys {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(bucket) = self.buckets.get(key) {
            return bucket.measure(f);
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.sweep();
        }
        if self.len.load(Ordering::Relaxed) < self.max_keys {
            let bucket = self.buckets.entry(*key).or_insert_with(|| {
                self.len.fetch_add(1, Ordering::Relaxed);
                KeyBucket::default()
            });
            return bucket.downgrade().measure(f);
        }
        self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meta_protocol::{Message, MessageKind};
    use metaproxy_router::{RouteConfigSpec, RouteSpec, RouteTable};

    fn build(config: serde_json::Value) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        let ctx = FilterContext {
            listener: "in",
            label: "local_rate_limit",
        };
        LocalRateLimitFactory.build(&config, &ctx)
    }

    fn table() -> RouteTable {
        let mut a = RouteSpec::new("a", "c");
        a.matchers = vec![metaproxy_router::MatcherSpec::new(
            "method",
            metaproxy_router::MatchKind::Exact("a".into()),
        )];
        let b = RouteSpec::new("b", "c");
        RouteTable::compile(&RouteConfigSpec {
            name: "r".into(),
            routes: vec![a, b],
        })
        .unwrap()
    }

    fn admitted(filter: &dyn Filter, table: &RouteTable, pairs: &[(&str, &str)]) -> bool {
        let mut msg = Message::new(MessageKind::Request, 1, Bytes::new());
        for (k, v) in pairs {
            msg.metadata_mut().set((*k).into(), (*v).into());
        }
        let mut req = FilterRequest::new("in", &mut msg, table);
        match filter.on_request(&mut req) {
            Verdict::Continue => true,
            Verdict::Reply(kind, text) => {
                assert_eq!(kind, LocalReplyKind::RateLimited);
                assert!(text.contains("rate limited"), "{text}");
                false
            }
            Verdict::Wait(_) => panic!("never waits"),
        }
    }

    #[test]
    fn per_key_buckets_let_exactly_the_burst_through() {
        let t = table();
        let f = build(serde_json::json!({"rate": 1, "per": "1h", "burst": 3, "by": "metadata", "key": "user"}))
            .unwrap();
        let alice: Vec<bool> = (0..5)
            .map(|_| admitted(&*f, &t, &[("user", "alice")]))
            .collect();
        assert_eq!(alice, [true, true, true, false, false]);
        assert!(
            admitted(&*f, &t, &[("user", "bob")]),
            "other users unaffected"
        );
        for _ in 0..10 {
            assert!(admitted(&*f, &t, &[]), "no key: not limited");
        }
    }

    #[test]
    fn per_listener_and_per_route() {
        let t = table();
        let f = build(serde_json::json!({"rate": 2, "per": "1h"})).unwrap();
        let got: Vec<bool> = (0..3).map(|_| admitted(&*f, &t, &[])).collect();
        assert_eq!(got, [true, true, false]);
        let f = build(serde_json::json!({"rate": 1, "per": "1h", "by": "route"})).unwrap();
        assert!(admitted(&*f, &t, &[("method", "a")]));
        assert!(!admitted(&*f, &t, &[("method", "a")]));
        assert!(
            admitted(&*f, &t, &[("method", "b")]),
            "route b has its own bucket"
        );
    }

    #[test]
    fn keys_past_the_bound_share_the_overflow_bucket() {
        let t = table();
        let f = build(serde_json::json!({"rate": 1, "per": "1h", "burst": 1, "by": "metadata", "key": "user", "max_keys": 2}))
            .unwrap();
        assert!(admitted(&*f, &t, &[("user", "a")]));
        assert!(admitted(&*f, &t, &[("user", "b")]));
        // The table is full and nothing has refilled: c and d share one bucket.
        assert!(admitted(&*f, &t, &[("user", "c")]));
        assert!(!admitted(&*f, &t, &[("user", "d")]));
        assert!(
            !admitted(&*f, &t, &[("user", "a")]),
            "a keeps its own bucket"
        );
    }

    #[test]
    fn refilled_buckets_are_swept_to_make_room() {
        let store = BoundedKeys::new(1);
        let ok = |_: Option<Nanos>| Ok::<_, ()>(((), Nanos::from(1u64)));
        store.measure_and_replace(&1, ok).unwrap();
        assert_eq!(store.buckets.len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Key 1's bucket was full again after 1ns: the sweep drops it for key 2.
        store.measure_and_replace(&2, ok).unwrap();
        assert!(store.buckets.contains_key(&2));
        assert!(!store.buckets.contains_key(&1));
        assert_eq!(store.len.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_configs_name_their_fields() {
        let fields = |v: serde_json::Value| -> Vec<String> {
            build(v)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(serde_json::json!({"rate": 0})), ["rate"]);
        assert_eq!(
            fields(serde_json::json!({"rate": 1, "burst": 0})),
            ["burst"]
        );
        assert_eq!(
            fields(serde_json::json!({"rate": 1, "by": "metadata"})),
            ["key"]
        );
        assert_eq!(
            fields(serde_json::json!({"rate": 1, "key": "user"})),
            ["key"]
        );
        assert_eq!(
            fields(serde_json::json!({"rate": 1, "max_keys": 0})),
            ["max_keys"]
        );
        assert_eq!(
            fields(serde_json::json!({"rate": 10, "per": "5ns"})),
            ["per"]
        );
        let e = build(serde_json::json!({"rate": 1, "colour": "red"}))
            .err()
            .unwrap();
        assert!(e[0].message.contains("colour"), "{e:?}");
        assert_eq!(e[0].field, "");
        assert_eq!(fields(serde_json::Value::Null), [""], "rate is required");
    }
}
