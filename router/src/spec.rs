//! Plain input specs: what the runtime builds from the YAML config (docs/CONFIG.md) and hands
//! to [`crate::RouteTable::compile`]. No serde here; the runtime owns parsing.

use std::time::Duration;

/// Default per-request timeout when a route sets none (15s, as docs/CONFIG.md says).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// One `route_configs[]` entry: a name and its routes, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteConfigSpec {
    /// The route config's name (what listeners refer to).
    pub name: String,
    /// Routes in order; the first whose match holds wins.
    pub routes: Vec<RouteSpec>,
}

/// One route: conditions, where to send, and what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// The route's name (metrics, logs).
    pub name: String,
    /// `match.metadata`: every condition must hold; none matches everything.
    pub matchers: Vec<MatcherSpec>,
    /// `route.cluster` or `route.weighted_clusters`.
    pub target: TargetSpec,
    /// `route.mirror`: fire-and-forget copies.
    pub mirrors: Vec<MirrorSpec>,
    /// `route.hash_policy`: metadata keys hashed for sticky splits, ring_hash and maglev.
    pub hash_policy: Vec<String>,
    /// `route.timeout` (the runtime fills in [`DEFAULT_ROUTE_TIMEOUT`] when absent).
    pub timeout: Duration,
    /// `route.retries.attempts`: extra attempts for requests never sent.
    pub retries: u32,
    /// `request_mutation`: (key, value) set on the forwarded request, in order.
    pub request_mutation: Vec<(String, String)>,
    /// `response_mutation`: (key, value) set on the returned response, in order.
    pub response_mutation: Vec<(String, String)>,
}

impl RouteSpec {
    /// A route named `name` that matches everything and sends to `cluster`, with the
    /// The config defaults (15s timeout, no retries, no mirrors, no mutations). Handy in tests
    /// and for building specs field by field.
    pub fn new(name: impl Into<String>, cluster: impl Into<String>) -> Self {
        RouteSpec {
            name: name.into(),
            matchers: Vec::new(),
            target: TargetSpec::Cluster(cluster.into()),
            mirrors: Vec::new(),
            hash_policy: Vec::new(),
            timeout: DEFAULT_ROUTE_TIMEOUT,
            retries: 0,
            request_mutation: Vec::new(),
            response_mutation: Vec::new(),
        }
    }
}

/// One `match.metadata[]` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct MatcherSpec {
    /// The metadata key (case-sensitive).
    pub key: String,
    /// How the value is tested.
    pub kind: MatchKind,
    /// Negates the whole condition (including presence: an inverted condition holds
    /// when the key is absent).
    pub invert: bool,
}

impl MatcherSpec {
    /// A non-inverted condition.
    pub fn new(key: impl Into<String>, kind: MatchKind) -> Self {
        MatcherSpec {
            key: key.into(),
            kind,
            invert: false,
        }
    }

    /// The same condition, inverted.
    pub fn inverted(mut self) -> Self {
        self.invert = !self.invert;
        self
    }
}

/// How a condition tests a metadata value. Every kind except [`MatchKind::Present`]
/// requires the key to be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchKind {
    /// The value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The value ends with this string.
    Suffix(String),
    /// The regex matches somewhere in the value (unanchored search, like
    /// `regex::Regex::is_match`; write `^...$` for a whole-value match).
    Regex(String),
    /// The key is present, whatever its value.
    Present,
}

/// Where a route sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// `route.cluster`: every request to this cluster.
    Cluster(String),
    /// `route.weighted_clusters`: (cluster, weight) pairs; weight 0 sends nothing; the
    /// total must be > 0.
    Weighted(Vec<(String, u32)>),
}

/// One `route.mirror[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSpec {
    /// The mirror cluster.
    pub cluster: String,
    /// Share of requests copied, `0..=100`, fractions allowed.
    pub percent: f64,
}
