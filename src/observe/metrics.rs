//! The metrics registry (names in docs/METRICS.md), rendered in the Prometheus text exposition format.
//!
//! Label lookups happen once, when a listener, route or cluster is set up (config load,
//! connection accept); they return cheap cloneable handles ([`Counter`], [`Gauge`],
//! [`Histogram`]). Handles for the same label values share the same storage, so a series
//! survives a config reload that re-registers it.
//!
//! Counters and histograms, which the per-request path updates, are sharded per thread:
//! each series holds [`SHARDS`] cache-line-aligned cells, a thread writes only its own
//! cell, and a scrape sums them. The first `SHARDS - 1` threads that touch a metric (the
//! per-core workers start first) each own a cell outright and update it with a plain
//! load and store, no locked instruction and no cache line shared with another worker;
//! later threads share the last cell and use atomic adds. So the request path takes no
//! lock, allocates nothing, hashes no label and shares no atomic with another worker.
//! Gauges (connections open) change per connection, not per request, and stay one
//! shared atomic.
//!
//! Series are never removed: a counter of a listener or cluster that a reload dropped
//! keeps its last value (Prometheus handles stale series; removing them would make
//! counters go backwards when the name comes back).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meta_protocol::{LocalReplyKind, ResponseStatus};

/// Upper bounds of the `request_duration_seconds` buckets, in nanoseconds, with the
/// `le` label each one is rendered with. From 0.5 ms to 10 s; `+Inf` is implicit.
pub const DURATION_BUCKETS: [(u64, &str); 14] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Number of histogram slots: one per finite bucket plus `+Inf`.
const SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// Cells per counter or histogram: one per thread for the first `SHARDS - 1` threads
/// that update metrics, the last one shared by any further threads.
pub const SHARDS: usize = 16;

/// Threads that have been given a shard so far.
static THREADS_SEEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard; `usize::MAX` until its first metric update.
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard index, assigned on first use.
#[inline]
fn thread_shard() -> usize {
    THREAD_SHARD.with(|cell| {
        let shard = cell.get();
        if shard != usize::MAX {
            return shard;
        }
        let seen = THREADS_SEEN.fetch_add(1, Ordering::Relaxed);
        let shard = seen.min(SHARDS - 1);
        cell.set(shard);
        shard
    })
}

/// Whether only one thread ever writes `shard`.
#[inline]
fn is_owned(shard: usize) -> bool {
    shard < SHARDS - 1
}

/// Adds `n` to this thread's cell: a plain load and store when the thread owns the
/// cell, an atomic add on the shared last cell.
#[inline]
fn add_to(cell: &AtomicU64, shard: usize, n: u64) {
    if is_owned(shard) {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    } else {
        cell.fetch_add(n, Ordering::Relaxed);
    }
}

/// One thread's cell of a counter, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct CounterShard(AtomicU64);

/// A monotonically increasing count, sharded per thread (see the module docs).
/// Cloning shares the count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<[CounterShard; SHARDS]>);

impl Default for Counter {
    fn default() -> Self {
        Counter(Arc::new(std::array::from_fn(|_| CounterShard::default())))
    }
}

impl Counter {
    /// A counter not registered anywhere (for tests and for disabled paths).
    pub fn detached() -> Self {
        Self::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = thread_shard();
        if let Some(cell) = self.0.get(shard) {
            add_to(&cell.0, shard, n);
        }
    }

    /// The current count: the sum of every thread's cell.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

/// A value that goes up and down (active connections). Cloning shares the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// A gauge not registered anywhere.
    pub fn detached() -> Self {
        Self::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `delta` (which may be negative).
    #[inline]
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds one now and subtracts it again when the returned guard is dropped, so the
    /// gauge stays right whichever way a connection ends (error, panic, cancellation).
    #[inline]
    pub fn track(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// Decrements its [`Gauge`] on drop; see [`Gauge::track`].
#[derive(Debug)]
#[must_use = "the gauge is decremented as soon as the guard is dropped"]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One thread's cells of a histogram, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct HistogramShard {
    /// Non-cumulative counts per slot (the last one is `+Inf`).
    slots: [AtomicU64; SLOTS],
    /// Sum of all observations in nanoseconds.
    sum_nanos: AtomicU64,
}

/// A latency histogram with the [`DURATION_BUCKETS`], sharded per thread like
/// [`Counter`]. Observing updates two cells of the thread's shard. Cloning shares the
/// buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<[HistogramShard; SHARDS]>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Arc::new(std::array::from_fn(|_| HistogramShard::default())))
    }
}

/// A consistent-enough copy of a histogram's state (see [`Histogram::snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per entry of [`DURATION_BUCKETS`], then `+Inf`.
    pub cumulative: [u64; SLOTS],
    /// Sum of the observations in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Number of observations (equal to the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative[SLOTS - 1]
    }

    /// Sum of the observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }
}

impl Histogram {
    /// A histogram not registered anywhere.
    pub fn detached() -> Self {
        Self::default()
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = DURATION_BUCKETS.partition_point(|&(bound, _)| bound < nanos);
        let index = thread_shard();
        let Some(shard) = self.0.get(index) else {
            return;
        };
        // `slot` is at most DURATION_BUCKETS.len() == SLOTS - 1.
        if let Some(cell) = shard.slots.get(slot) {
            add_to(cell, index, 1);
        }
        add_to(&shard.sum_nanos, index, nanos);
    }

    /// The cumulative bucket counts and the sum. Taken without a lock, so under
    /// concurrent observation the sum may be a few observations ahead of or behind
    /// the counts; the counts are always consistent with each other.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; SLOTS];
        let mut sum_nanos = 0u64;
        for shard in self.0.iter() {
            for (count, cell) in counts.iter_mut().zip(shard.slots.iter()) {
                *count = count.wrapping_add(cell.load(Ordering::Relaxed));
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let mut cumulative = [0u64; SLOTS];
        let mut total = 0u64;
        for (out, count) in cumulative.iter_mut().zip(counts) {
            total = total.wrapping_add(count);
            *out = total;
        }
        HistogramSnapshot {
            cumulative,
            sum_nanos,
        }
    }
}

/// One series' storage.
#[derive(Clone, Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: one name, one label set, many series.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Box<[Box<str>]>, Series>>,
}

impl Family {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Box<[Box<str>]>, Series>> {
        // A panic while holding the lock cannot leave the map inconsistent (inserts
        // are single operations), so a poisoned lock is still usable.
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The series for `values` (one per label, in order), created on first use.
    fn get_or_create(&self, values: &[&str]) -> Series {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Box<[Box<str>]> = values.iter().map(|v| Box::<str>::from(*v)).collect();
        let mut map = self.lock();
        if let Some(found) = map.get(&key) {
            return found.clone();
        }
        let series = match self.kind {
            Kind::Counter => Series::Counter(Counter::default()),
            Kind::Gauge => Series::Gauge(Gauge::default()),
            Kind::Histogram => Series::Histogram(Histogram::default()),
        };
        map.insert(key, series.clone());
        series
    }

    fn counter(&self, values: &[&str]) -> Counter {
        match self.get_or_create(values) {
            Series::Counter(c) => c,
            // Families are built with a fixed kind; other variants cannot occur.
            _ => Counter::detached(),
        }
    }

    fn gauge(&self, values: &[&str]) -> Gauge {
        match self.get_or_create(values) {
            Series::Gauge(g) => g,
            _ => Gauge::detached(),
        }
    }

    fn histogram(&self, values: &[&str]) -> Histogram {
        match self.get_or_create(values) {
            Series::Histogram(h) => h,
            _ => Histogram::detached(),
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        // Snapshot the handles under the lock, format outside it.
        let series: Vec<(Box<[Box<str>]>, Series)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (values, s) in &series {
            match s {
                Series::Counter(c) => {
                    self.sample(out, "", values, None, c.get());
                }
                Series::Gauge(g) => {
                    self.sample(out, "", values, None, g.get());
                }
                Series::Histogram(h) => {
                    let snap = h.snapshot();
                    for (i, (_, le)) in DURATION_BUCKETS.iter().enumerate() {
                        self.sample(out, "_bucket", values, Some(le), snap.cumulative[i]);
                    }
                    self.sample(out, "_bucket", values, Some("+Inf"), snap.count());
                    self.sample(out, "_sum", values, None, snap.sum_seconds());
                    self.sample(out, "_count", values, None, snap.count());
                }
            }
        }
    }

    fn sample(
        &self,
        out: &mut String,
        suffix: &str,
        values: &[Box<str>],
        le: Option<&str>,
        value: impl std::fmt::Display,
    ) {
        out.push_str(self.name);
        out.push_str(suffix);
        let mut first = true;
        let mut open = |out: &mut String| {
            out.push(if first { '{' } else { ',' });
            first = false;
        };
        for (name, value) in self.labels.iter().zip(values.iter()) {
            open(out);
            out.push_str(name);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        if let Some(le) = le {
            open(out);
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        if !first {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// Appends `value` escaped as the text format requires inside a label value:
/// backslash, double quote and line feed become `\\`, `\"` and `\n`.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The metric names of docs/METRICS.md, without the `metaproxy_` prefix, in rendering order.
pub const METRIC_NAMES: [&str; 16] = [
    "downstream_connections_total",
    "downstream_connections_active",
    "requests_total",
    "responses_total",
    "local_replies_total",
    "request_duration_seconds",
    "upstream_connections_active",
    "mirror_requests_total",
    "decode_errors_total",
    "outlier_ejections_total",
    "config_reloads_total",
    "rate_limited_total",
    "hot_restart_epoch",
    "xds_updates_total",
    "buffered_bytes",
    "connections_closed_total",
];

/// Every metric of the proxy. Create one with [`Metrics::new`] and share it.
#[derive(Debug)]
pub struct Metrics {
    downstream_connections_total: Family,
    downstream_connections_active: Family,
    requests_total: Family,
    responses_total: Family,
    local_replies_total: Family,
    request_duration_seconds: Family,
    upstream_connections_active: Family,
    mirror_requests_total: Family,
    decode_errors_total: Family,
    outlier_ejections_total: Family,
    config_reloads_total: Family,
    rate_limited_total: Family,
    hot_restart_epoch_family: Family,
    xds_updates_total: Family,
    reload_ok: Counter,
    reload_error: Counter,
    hot_restart_epoch: Gauge,
    buffered_bytes: Family,
    connections_closed_total: Family,
}

/// Per-listener handles, looked up once per listener (or per accepted connection).
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// `downstream_connections_total{listener}`.
    pub connections_total: Counter,
    /// `downstream_connections_active{listener}`.
    pub connections_active: Gauge,
    /// `decode_errors_total{listener}`.
    pub decode_errors: Counter,
    local_replies: [Counter; LocalReplyKind::ALL.len()],
    closed: [Counter; ClosedReason::ALL.len()],
}

/// Why the proxy closed a client connection on its own (`connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedReason {
    /// Replies waited longer than `write_timeout` without the client reading any.
    WriteTimeout,
    /// A frame was started but not finished within `frame_timeout`.
    FrameTimeout,
    /// Replies waiting for the client passed twice `max_buffered_bytes`.
    OutputLimit,
}

impl ClosedReason {
    /// Every reason, in metric order.
    pub const ALL: [ClosedReason; 3] = [
        ClosedReason::WriteTimeout,
        ClosedReason::FrameTimeout,
        ClosedReason::OutputLimit,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedReason::WriteTimeout => "write_timeout",
            ClosedReason::FrameTimeout => "frame_timeout",
            ClosedReason::OutputLimit => "output_limit",
        }
    }
}

impl ListenerMetrics {
    /// `local_replies_total{listener,reason}` for `kind`.
    #[inline]
    pub fn local_reply(&self, kind: LocalReplyKind) -> &Counter {
        let index = match kind {
            LocalReplyKind::NoRoute => 0,
            LocalReplyKind::UpstreamFailure => 1,
            LocalReplyKind::Timeout => 2,
            LocalReplyKind::Overloaded => 3,
            LocalReplyKind::BadRequest => 4,
            LocalReplyKind::RateLimited => 5,
            LocalReplyKind::Forbidden => 6,
        };
        &self.local_replies[index]
    }

    /// `connections_closed_total{listener,reason}` for `reason`.
    pub fn closed(&self, reason: ClosedReason) -> &Counter {
        &self.closed[reason as usize]
    }

    /// Counts an accepted connection and tracks it as active until the guard drops.
    #[inline]
    pub fn connection_opened(&self) -> GaugeGuard {
        self.connections_total.inc();
        self.connections_active.track()
    }
}

/// Handles for responses of one cluster seen by one listener.
#[derive(Clone, Debug)]
pub struct ResponseMetrics {
    /// `responses_total{listener,cluster,status="ok"}`.
    pub ok: Counter,
    /// `responses_total{listener,cluster,status="error"}`.
    pub error: Counter,
    /// `responses_total{listener,cluster,status="exception"}`.
    pub exception: Counter,
    /// `request_duration_seconds{listener,cluster}`.
    pub duration: Histogram,
}

impl ResponseMetrics {
    /// Counts a response by status and records how long the request took.
    #[inline]
    pub fn record(&self, status: ResponseStatus, elapsed: Duration) {
        match status {
            ResponseStatus::Ok => self.ok.inc(),
            ResponseStatus::Error => self.error.inc(),
            ResponseStatus::Exception => self.exception.inc(),
        }
        self.duration.observe(elapsed);
    }
}

/// Per-cluster handles.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// `upstream_connections_active{cluster}`.
    pub upstream_connections_active: Gauge,
    /// `outlier_ejections_total{cluster}`.
    pub outlier_ejections: Counter,
    /// `mirror_requests_total{cluster,result="sent"}`.
    pub mirror_sent: Counter,
    /// `mirror_requests_total{cluster,result="dropped"}`.
    pub mirror_dropped: Counter,
}

impl Metrics {
    /// The registry with every documented family and both `config_reloads_total` series.
    pub fn new() -> Arc<Metrics> {
        let config_reloads_total = Family::new(
            "metaproxy_config_reloads_total",
            "Config reloads by result (ok, error).",
            Kind::Counter,
            &["result"],
        );
        let reload_ok = config_reloads_total.counter(&["ok"]);
        let reload_error = config_reloads_total.counter(&["error"]);
        let hot_restart_epoch_family = Family::new(
            "metaproxy_hot_restart_epoch",
            "Hot restarts behind this process: 0 for a fresh start, +1 per takeover.",
            Kind::Gauge,
            &[],
        );
        let hot_restart_epoch = hot_restart_epoch_family.gauge(&[]);
        Arc::new(Metrics {
            downstream_connections_total: Family::new(
                "metaproxy_downstream_connections_total",
                "Client connections accepted.",
                Kind::Counter,
                &["listener"],
            ),
            downstream_connections_active: Family::new(
                "metaproxy_downstream_connections_active",
                "Client connections currently open.",
                Kind::Gauge,
                &["listener"],
            ),
            requests_total: Family::new(
                "metaproxy_requests_total",
                "Requests routed, by listener, route and cluster.",
                Kind::Counter,
                &["listener", "route", "cluster"],
            ),
            responses_total: Family::new(
                "metaproxy_responses_total",
                "Upstream responses by status (ok, error, exception).",
                Kind::Counter,
                &["listener", "cluster", "status"],
            ),
            local_replies_total: Family::new(
                "metaproxy_local_replies_total",
                "Error replies sent by the proxy itself, by reason.",
                Kind::Counter,
                &["listener", "reason"],
            ),
            request_duration_seconds: Family::new(
                "metaproxy_request_duration_seconds",
                "Time from receiving a request to sending its response, in seconds.",
                Kind::Histogram,
                &["listener", "cluster"],
            ),
            upstream_connections_active: Family::new(
                "metaproxy_upstream_connections_active",
                "Upstream connections currently open.",
                Kind::Gauge,
                &["cluster"],
            ),
            mirror_requests_total: Family::new(
                "metaproxy_mirror_requests_total",
                "Mirrored request copies by result (sent, dropped).",
                Kind::Counter,
                &["cluster", "result"],
            ),
            decode_errors_total: Family::new(
                "metaproxy_decode_errors_total",
                "Frames from clients that could not be decoded.",
                Kind::Counter,
                &["listener"],
            ),
            outlier_ejections_total: Family::new(
                "metaproxy_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                Kind::Counter,
                &["cluster"],
            ),
            config_reloads_total,
            rate_limited_total: Family::new(
                "metaproxy_rate_limited_total",
                "Requests refused by a rate-limiting filter, by listener and filter.",
                Kind::Counter,
                &["listener", "filter"],
            ),
            hot_restart_epoch_family,
            xds_updates_total: Family::new(
                "metaproxy_xds_updates_total",
                "xDS updates by resource type (cluster, endpoint, route) and result (ack, nack).",
                Kind::Counter,
                &["type", "result"],
            ),
            reload_ok,
            reload_error,
            hot_restart_epoch,
            buffered_bytes: Family::new(
                "metaproxy_buffered_bytes",
                "Bytes of requests in flight and replies waiting for clients, over the whole process.",
                Kind::Gauge,
                &[],
            ),
            connections_closed_total: Family::new(
                "metaproxy_connections_closed_total",
                "Client connections the proxy closed on its own, by reason (write_timeout, frame_timeout, output_limit).",
                Kind::Counter,
                &["listener", "reason"],
            ),
        })
    }

    /// `buffered_bytes`: the process-wide buffer budget in use.
    pub fn buffered_bytes(&self) -> Gauge {
        self.buffered_bytes.gauge(&[])
    }

    fn families(&self) -> [&Family; 16] {
        [
            &self.downstream_connections_total,
            &self.downstream_connections_active,
            &self.requests_total,
            &self.responses_total,
            &self.local_replies_total,
            &self.request_duration_seconds,
            &self.upstream_connections_active,
            &self.mirror_requests_total,
            &self.decode_errors_total,
            &self.outlier_ejections_total,
            &self.config_reloads_total,
            &self.rate_limited_total,
            &self.hot_restart_epoch_family,
            &self.xds_updates_total,
            &self.buffered_bytes,
            &self.connections_closed_total,
        ]
    }

    /// Handles for listener `name`; registers its series (all local reply reasons at 0).
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            connections_total: self.downstream_connections_total.counter(&[name]),
            connections_active: self.downstream_connections_active.gauge(&[name]),
            decode_errors: self.decode_errors_total.counter(&[name]),
            local_replies: LocalReplyKind::ALL
                .map(|kind| self.local_replies_total.counter(&[name, kind.as_str()])),
            closed: ClosedReason::ALL.map(|reason| {
                self.connections_closed_total
                    .counter(&[name, reason.as_str()])
            }),
        }
    }

    /// `requests_total{listener,route,cluster}`.
    pub fn request(&self, listener: &str, route: &str, cluster: &str) -> Counter {
        self.requests_total.counter(&[listener, route, cluster])
    }

    /// Response counters and the latency histogram of `cluster` seen from `listener`.
    pub fn upstream(&self, listener: &str, cluster: &str) -> ResponseMetrics {
        let status = |s: ResponseStatus| {
            self.responses_total
                .counter(&[listener, cluster, s.as_str()])
        };
        ResponseMetrics {
            ok: status(ResponseStatus::Ok),
            error: status(ResponseStatus::Error),
            exception: status(ResponseStatus::Exception),
            duration: self
                .request_duration_seconds
                .histogram(&[listener, cluster]),
        }
    }

    /// Handles for cluster `name`.
    pub fn cluster(&self, name: &str) -> ClusterMetrics {
        ClusterMetrics {
            upstream_connections_active: self.upstream_connections_active.gauge(&[name]),
            outlier_ejections: self.outlier_ejections_total.counter(&[name]),
            mirror_sent: self.mirror_requests_total.counter(&[name, "sent"]),
            mirror_dropped: self.mirror_requests_total.counter(&[name, "dropped"]),
        }
    }

    /// `rate_limited_total{listener,filter}`.
    pub fn rate_limited(&self, listener: &str, filter: &str) -> Counter {
        self.rate_limited_total.counter(&[listener, filter])
    }

    /// Counts a config reload attempt (`config_reloads_total{result}`).
    pub fn config_reload(&self, ok: bool) {
        if ok {
            self.reload_ok.inc();
        } else {
            self.reload_error.inc();
        }
    }

    /// Sets `hot_restart_epoch` (0 for a fresh start, +1 per takeover).
    pub fn set_hot_restart_epoch(&self, epoch: u64) {
        self.hot_restart_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Counts an xDS update of resource type `type_label` by result
    /// (`xds_updates_total{type,result}`, result `ack` or `nack`). Called once per
    /// discovery response, not on the request path.
    pub fn xds_update(&self, type_label: &str, accepted: bool) {
        let result = if accepted { "ack" } else { "nack" };
        self.xds_updates_total.counter(&[type_label, result]).inc();
    }

    /// The whole registry in the Prometheus text exposition format (version 0.0.4):
    /// families in documented order, each with `# HELP` and `# TYPE` (also when it has no
    /// series yet), series sorted by label values.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_into(&mut out);
        out
    }

    /// Appends [`Metrics::render`]'s output to `out`.
    pub fn render_into(&self, out: &mut String) {
        for family in self.families() {
            family.render(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).expect("exposition parses")
    }

    fn labels_of(s: &prometheus_parse::Sample) -> Vec<(String, String)> {
        let mut v: Vec<_> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }

    fn find<'a>(
        scrape: &'a prometheus_parse::Scrape,
        name: &str,
        labels: &[(&str, &str)],
    ) -> &'a prometheus_parse::Value {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        let hits: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels_of(s) == want)
            .collect();
        assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
        &hits[0].value
    }

    fn populated() -> Arc<Metrics> {
        let m = Metrics::new();
        let l = m.listener("dubbo-in");
        l.connections_total.add(3);
        l.connections_active.set(2);
        l.decode_errors.inc();
        l.local_reply(LocalReplyKind::NoRoute).add(4);
        l.local_reply(LocalReplyKind::Timeout).inc();
        l.local_reply(LocalReplyKind::RateLimited).add(6);
        l.local_reply(LocalReplyKind::Forbidden).add(2);
        m.rate_limited("dubbo-in", "local_rate_limit").add(6);
        m.request("dubbo-in", "beta", "demo-v2").add(7);
        m.request("dubbo-in", "default", "demo-v1").add(5);
        let up = m.upstream("dubbo-in", "demo-v1");
        up.record(ResponseStatus::Ok, Duration::from_micros(300)); // <= 0.5 ms
        up.record(ResponseStatus::Ok, Duration::from_millis(1)); // exactly on 0.001
        up.record(ResponseStatus::Exception, Duration::from_millis(20));
        up.record(ResponseStatus::Error, Duration::from_secs(30)); // +Inf only
        let c = m.cluster("demo-v1");
        c.upstream_connections_active.set(4);
        c.outlier_ejections.inc();
        c.mirror_sent.add(9);
        c.mirror_dropped.add(2);
        m.xds_update("cluster", true);
        m.xds_update("cluster", true);
        m.xds_update("route", false);
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        m.buffered_bytes().add(4096);
        l.closed(ClosedReason::FrameTimeout).inc();
        m
    }

    #[test]
    fn every_family_parses_with_the_recorded_values() {
        let m = populated();
        let text = m.render();
        let scrape = parse(&text);

        // Every family documented with a HELP line, under its prefixed name.
        for name in METRIC_NAMES {
            let full = format!("metaproxy_{name}");
            assert!(scrape.docs.contains_key(&full), "no HELP for {full}");
            assert!(
                scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == full || s.metric == format!("{full}_sum")),
                "no sample for {full}"
            );
        }
        use prometheus_parse::Value::*;
        let l = "dubbo-in";
        assert_eq!(
            find(
                &scrape,
                "metaproxy_downstream_connections_total",
                &[("listener", l)]
            ),
            &Counter(3.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_downstream_connections_active",
                &[("listener", l)]
            ),
            &Gauge(2.0)
        );
        assert_eq!(
            find(&scrape, "metaproxy_decode_errors_total", &[("listener", l)]),
            &Counter(1.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_rate_limited_total",
                &[("listener", l), ("filter", "local_rate_limit")]
            ),
            &Counter(6.0)
        );
        let reasons: HashMap<&str, f64> = [
            ("no_route", 4.0),
            ("upstream_failure", 0.0),
            ("timeout", 1.0),
            ("overloaded", 0.0),
            ("bad_request", 0.0),
            ("rate_limited", 6.0),
            ("forbidden", 2.0),
        ]
        .into();
        for (reason, n) in reasons {
            assert_eq!(
                find(
                    &scrape,
                    "metaproxy_local_replies_total",
                    &[("listener", l), ("reason", reason)]
                ),
                &Counter(n),
                "{reason}"
            );
        }
        assert_eq!(
            find(
                &scrape,
                "metaproxy_requests_total",
                &[("listener", l), ("route", "beta"), ("cluster", "demo-v2")]
            ),
            &Counter(7.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_requests_total",
                &[
                    ("listener", l),
                    ("route", "default"),
                    ("cluster", "demo-v1")
                ]
            ),
            &Counter(5.0)
        );
        for (status, n) in [("ok", 2.0), ("error", 1.0), ("exception", 1.0)] {
            assert_eq!(
                find(
                    &scrape,
                    "metaproxy_responses_total",
                    &[("listener", l), ("cluster", "demo-v1"), ("status", status)]
                ),
                &Counter(n)
            );
        }
        let hist = find(
            &scrape,
            "metaproxy_request_duration_seconds",
            &[("listener", l), ("cluster", "demo-v1")],
        );
        let Histogram(buckets) = hist else {
            panic!("not a histogram: {hist:?}")
        };
        assert_eq!(buckets.len(), 15, "14 bounds and +Inf");
        let at = |le: f64| {
            buckets
                .iter()
                .find(|b| b.less_than == le)
                .unwrap_or_else(|| panic!("no bucket {le}"))
                .count
        };
        assert_eq!(buckets.first().map(|b| b.less_than), Some(0.0005));
        assert_eq!(at(0.0005), 1.0);
        assert_eq!(at(0.001), 2.0, "le is inclusive");
        assert_eq!(at(0.01), 2.0);
        assert_eq!(at(0.025), 3.0);
        assert_eq!(at(10.0), 3.0);
        assert_eq!(at(f64::INFINITY), 4.0);
        // _sum and _count are not typed by this parser: they come back untyped.
        let sum = find(
            &scrape,
            "metaproxy_request_duration_seconds_sum",
            &[("listener", l), ("cluster", "demo-v1")],
        );
        let Untyped(sum) = sum else { panic!("{sum:?}") };
        assert!((sum - 30.0213).abs() < 1e-9, "{sum}");
        assert_eq!(
            find(
                &scrape,
                "metaproxy_request_duration_seconds_count",
                &[("listener", l), ("cluster", "demo-v1")]
            ),
            &Untyped(4.0)
        );
        let c = "demo-v1";
        assert_eq!(
            find(
                &scrape,
                "metaproxy_upstream_connections_active",
                &[("cluster", c)]
            ),
            &Gauge(4.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_outlier_ejections_total",
                &[("cluster", c)]
            ),
            &Counter(1.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_mirror_requests_total",
                &[("cluster", c), ("result", "sent")]
            ),
            &Counter(9.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_mirror_requests_total",
                &[("cluster", c), ("result", "dropped")]
            ),
            &Counter(2.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_config_reloads_total",
                &[("result", "ok")]
            ),
            &Counter(1.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_config_reloads_total",
                &[("result", "error")]
            ),
            &Counter(2.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_xds_updates_total",
                &[("type", "cluster"), ("result", "ack")]
            ),
            &Counter(2.0)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_xds_updates_total",
                &[("type", "route"), ("result", "nack")]
            ),
            &Counter(1.0)
        );

        // The parser silently skips lines it cannot read: check that none were skipped.
        let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
        let parsed_lines: usize = scrape
            .samples
            .iter()
            .map(|s| match &s.value {
                Histogram(b) => b.len(),
                _ => 1,
            })
            .sum();
        assert_eq!(sample_lines, parsed_lines);
    }

    #[test]
    fn types_and_help_precede_samples_and_order_is_deterministic() {
        let m = populated();
        let text = m.render();
        assert_eq!(text, populated().render(), "same state, same text");
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                current = parts.next();
                let kind = parts.next().unwrap_or("");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            } else if !line.starts_with("# HELP ") {
                let family = current.expect("sample before any TYPE line");
                let name = line.split(['{', ' ']).next().unwrap_or("");
                assert!(name.starts_with(family), "{name} outside {family}");
            }
        }
        // Families appear in documented order.
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE metaproxy_"))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(order, METRIC_NAMES);
    }

    #[test]
    fn empty_registry_lists_every_family_both_reload_results_and_the_epoch() {
        let m = Metrics::new();
        let text = m.render();
        let scrape = parse(&text);
        assert_eq!(scrape.docs.len(), METRIC_NAMES.len());
        let reloads: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "metaproxy_config_reloads_total")
            .collect();
        assert_eq!(reloads.len(), 2);
        assert!(text.contains("\nmetaproxy_hot_restart_epoch 0\n"), "{text}");
        assert_eq!(scrape.samples.len(), 3, "{text}");
        m.set_hot_restart_epoch(3);
        assert!(m.render().contains("\nmetaproxy_hot_restart_epoch 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.request("a\"b", "c\\d", "e\nf").inc();
        let text = m.render();
        // The text format: `\` -> `\\`, `"` -> `\"`, line feed -> `\n`.
        let line = text
            .lines()
            .find(|l| l.starts_with("metaproxy_requests_total{"))
            .expect("sample line");
        assert_eq!(
            line,
            r#"metaproxy_requests_total{listener="a\"b",route="c\\d",cluster="e\nf"} 1"#
        );
    }

    #[test]
    fn handles_for_the_same_labels_share_state() {
        let m = Metrics::new();
        let a = m.request("l", "r", "c");
        let b = m.request("l", "r", "c");
        a.inc();
        b.add(2);
        assert_eq!(a.get(), 3);
        let other = m.request("l", "r", "c2");
        assert_eq!(other.get(), 0);
        let l1 = m.listener("l");
        let l2 = m.listener("l");
        l1.local_reply(LocalReplyKind::Overloaded).inc();
        assert_eq!(l2.local_reply(LocalReplyKind::Overloaded).get(), 1);
        assert_eq!(l2.local_reply(LocalReplyKind::NoRoute).get(), 0);
    }

    #[test]
    fn gauge_guard_decrements_on_drop() {
        let m = Metrics::new();
        let l = m.listener("l");
        let g1 = l.connection_opened();
        let g2 = l.connection_opened();
        assert_eq!(l.connections_active.get(), 2);
        drop(g1);
        assert_eq!(l.connections_active.get(), 1);
        drop(g2);
        assert_eq!(l.connections_active.get(), 0);
        assert_eq!(l.connections_total.get(), 2);
    }

    #[test]
    fn histogram_bucket_edges() {
        let h = Histogram::detached();
        h.observe(Duration::ZERO);
        h.observe(Duration::from_nanos(500_000)); // on the first bound
        h.observe(Duration::from_nanos(500_001)); // just above it
        h.observe(Duration::from_secs(10)); // on the last bound
        h.observe(Duration::MAX); // saturates into +Inf
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[13], 4);
        assert_eq!(s.count(), 5);
    }

    #[test]
    fn concurrent_updates_are_exact() {
        const THREADS: usize = 8;
        const PER_THREAD: u64 = 20_000;
        let m = Metrics::new();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let m = &m;
                scope.spawn(move || {
                    // Each thread registers on its own, like connections do.
                    let req = m.request("l", "r", "c");
                    let up = m.upstream("l", "c");
                    let l = m.listener("l");
                    for i in 0..PER_THREAD {
                        req.inc();
                        l.connections_active.inc();
                        let status = if i % 2 == 0 {
                            ResponseStatus::Ok
                        } else {
                            ResponseStatus::Error
                        };
                        up.record(status, Duration::from_micros(100 + t as u64));
                        l.connections_active.dec();
                    }
                });
            }
        });
        let total = THREADS as u64 * PER_THREAD;
        let scrape = parse(&m.render());
        use prometheus_parse::Value;
        assert_eq!(
            find(
                &scrape,
                "metaproxy_requests_total",
                &[("listener", "l"), ("route", "r"), ("cluster", "c")]
            ),
            &Value::Counter(total as f64)
        );
        assert_eq!(
            find(
                &scrape,
                "metaproxy_downstream_connections_active",
                &[("listener", "l")]
            ),
            &Value::Gauge(0.0)
        );
        let up = m.upstream("l", "c");
        assert_eq!(up.ok.get() + up.error.get(), total);
        assert_eq!(up.ok.get(), total / 2);
        let snap = up.duration.snapshot();
        assert_eq!(snap.count(), total);
        let expected_sum: u64 = (0..THREADS as u64)
            .map(|t| (100_000 + t * 1000) * PER_THREAD)
            .sum();
        assert_eq!(snap.sum_nanos, expected_sum);
    }

    #[test]
    fn hot_path_operations_do_not_allocate() {
        let m = Metrics::new();
        let l = m.listener("l");
        let req = m.request("l", "r", "c");
        let up = m.upstream("l", "c");
        let cl = m.cluster("c");
        let info = allocation_counter::measure(|| {
            for i in 0..1000u64 {
                req.inc();
                req.add(2);
                l.connections_active.inc();
                l.connections_active.dec();
                l.local_reply(LocalReplyKind::Timeout).inc();
                cl.upstream_connections_active.inc();
                cl.mirror_sent.inc();
                up.duration.observe(Duration::from_micros(i * 37));
                up.record(ResponseStatus::Exception, Duration::from_micros(i));
                let guard = l.connection_opened();
                drop(guard);
            }
        });
        assert_eq!(info.count_total, 0, "{info:?}");
        assert_eq!(req.get(), 3000);
        // And the check itself can fail: registration does allocate.
        let info = allocation_counter::measure(|| {
            let _ = m.request("l", "r", "new-cluster");
        });
        assert!(info.count_total > 0);
    }

    #[test]
    fn threads_beyond_the_owned_shards_still_count_exactly() {
        // More threads than shards: the first ones own a cell, the rest share the last
        // one with atomic adds. Every increment must show up in the scrape.
        const THREADS: usize = 2 * SHARDS + 3;
        const PER_THREAD: u64 = 5_000;
        let m = Metrics::new();
        let counter = m.request("l", "r", "c");
        let up = m.upstream("l", "c");
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let (counter, up) = (&counter, &up);
                scope.spawn(move || {
                    for _ in 0..PER_THREAD {
                        counter.inc();
                        up.duration.observe(Duration::from_micros(700));
                    }
                    counter.add(2);
                });
            }
        });
        let total = THREADS as u64 * (PER_THREAD + 2);
        assert_eq!(counter.get(), total);
        let scrape = parse(&m.render());
        assert_eq!(
            find(
                &scrape,
                "metaproxy_requests_total",
                &[("listener", "l"), ("route", "r"), ("cluster", "c")]
            ),
            &prometheus_parse::Value::Counter(total as f64)
        );
        let snap = up.duration.snapshot();
        let observations = THREADS as u64 * PER_THREAD;
        assert_eq!(snap.count(), observations);
        assert_eq!(snap.cumulative[0], 0, "700 us is above 0.5 ms");
        assert_eq!(snap.cumulative[1], observations, "and within 1 ms");
        assert_eq!(snap.sum_nanos, observations * 700_000);
    }

    #[test]
    fn concurrent_threads_write_separate_cache_lines() {
        // Threads running at the same time get different cells (or the shared last
        // one), each on its own cache line, so per-core workers never write the same
        // line.
        assert_eq!(std::mem::align_of::<CounterShard>(), 64);
        assert_eq!(std::mem::size_of::<CounterShard>(), 64);
        assert_eq!(std::mem::align_of::<HistogramShard>(), 64);
        let barrier = std::sync::Barrier::new(4);
        let shards: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let shard = thread_shard();
                        assert_eq!(thread_shard(), shard, "stable per thread");
                        barrier.wait();
                        shard
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let owned: Vec<usize> = shards.iter().copied().filter(|s| is_owned(*s)).collect();
        let mut distinct = owned.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), owned.len(), "{shards:?}");
        assert!(shards.iter().all(|s| *s < SHARDS));
    }
}
