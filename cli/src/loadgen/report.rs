//! Counting, merging and printing results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{BenchArgs, BenchProtocol};

/// Highest latency the histogram tracks (larger values are clamped): 60 s in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A new latency histogram: nanoseconds, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant bounds are valid")
}

/// What went wrong with a request or a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// A connection could not be opened (counted per attempt).
    Connect,
    /// The connection closed or failed with requests outstanding (counted per request).
    Closed,
    /// The reply stream did not decode (counted per connection).
    Decode,
    /// A reply whose id matches no outstanding request.
    UnknownId,
    /// A reply with a non-OK status (Dubbo status != 20, Thrift TApplicationException).
    ErrorStatus,
    /// A business exception (Dubbo exception response, Thrift declared exception).
    Exception,
    /// An OK reply whose payload length differs from the request's.
    PayloadMismatch,
    /// An OK reply whose body does not have the echo shape.
    Malformed,
    /// A decoded message that is not a reply (request, one-way, go-away...).
    UnexpectedMessage,
    /// No reply within `--timeout` (counted per request).
    Timeout,
    /// A request could not be encoded.
    Encode,
    /// A connection task failed unexpectedly.
    Internal,
}

impl ErrorKind {
    /// The kind's name in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Closed => "closed",
            ErrorKind::Decode => "decode",
            ErrorKind::UnknownId => "unknown_id",
            ErrorKind::ErrorStatus => "error_status",
            ErrorKind::Exception => "exception",
            ErrorKind::PayloadMismatch => "payload_mismatch",
            ErrorKind::Malformed => "malformed",
            ErrorKind::UnexpectedMessage => "unexpected_message",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Encode => "encode",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Counters of one connection, merged into the totals at the end.
pub(crate) struct Totals {
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<ErrorKind, u64>,
    pub(crate) first_error: Option<String>,
    pub(crate) histogram: Histogram<u64>,
}

impl Totals {
    pub(crate) fn new() -> Self {
        Totals {
            ok: 0,
            errors: BTreeMap::new(),
            first_error: None,
            histogram: new_histogram(),
        }
    }

    /// Records a successful request's latency.
    #[inline]
    pub(crate) fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    /// Counts `n` errors of `kind`, keeping the first message for the report.
    pub(crate) fn record_error(&mut self, kind: ErrorKind, n: u64, message: Option<String>) {
        if n == 0 {
            return;
        }
        *self.errors.entry(kind).or_default() += n;
        if self.first_error.is_none() {
            self.first_error = message.map(|m| format!("{}: {m}", kind.as_str()));
        }
    }

    pub(crate) fn merge(&mut self, other: Totals) {
        self.ok += other.ok;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Both histograms share bounds, so adding cannot fail; a failure would only
        // lose latency samples, never counts.
        let _ = self.histogram.add(&other.histogram);
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        LatencySummary {
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The result of one run (`--json` prints it as one object).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// `dubbo`, `thrift`, or with `--protocol frame` the codec's name.
    pub protocol: String,
    /// Thrift `transport/protocol`, absent for Dubbo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thrift: Option<String>,
    /// The resolved target.
    pub target: String,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Payload bytes per request.
    pub payload: usize,
    /// The fixed rate asked for, if any.
    pub rate: Option<f64>,
    /// Wall time of the run in seconds (first connect to last reply).
    pub elapsed_s: f64,
    /// Requests answered correctly.
    pub ok: u64,
    /// Errors, all kinds.
    pub errors: u64,
    /// Errors by kind (only kinds that occurred).
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// The first error's message, when one was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Correct replies per second.
    pub requests_per_sec: f64,
    /// Latency of correct replies, microseconds (from the intended send time in
    /// fixed-rate mode).
    pub latency_us: LatencySummary,
}

impl BenchReport {
    pub(crate) fn new(
        args: &BenchArgs,
        target: SocketAddr,
        elapsed: Duration,
        total: Totals,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        BenchReport {
            protocol: match (args.protocol, &args.codec) {
                (BenchProtocol::Frame, Some(codec)) => codec.clone(),
                (p, _) => p.as_str().to_owned(),
            },
            thrift: (args.protocol == BenchProtocol::Thrift).then(|| {
                format!(
                    "{}/{}",
                    metaproxy_thrift::Transport::from(args.transport).as_str(),
                    match args.thrift_protocol {
                        super::ThriftProtocolArg::Binary => "binary",
                        super::ThriftProtocolArg::Compact => "compact",
                    }
                )
            }),
            target: target.to_string(),
            connections: args.connections,
            pipeline: args.pipeline,
            payload: args.payload,
            rate: args.rate,
            elapsed_s: secs,
            ok: total.ok,
            errors: total.errors.values().sum(),
            errors_by_kind: total.errors.iter().map(|(k, n)| (k.as_str(), *n)).collect(),
            first_error: total.first_error,
            requests_per_sec: total.ok as f64 / secs,
            latency_us: LatencySummary::of(&total.histogram),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let proto = match &self.thrift {
            Some(t) => format!("{} ({t})", self.protocol),
            None => self.protocol.to_owned(),
        };
        let _ = writeln!(
            s,
            "{proto} -> {}: {} connections x pipeline {}, {} B payload{}",
            self.target,
            self.connections,
            self.pipeline,
            self.payload,
            self.rate
                .map(|r| format!(", fixed rate {r} req/s"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "  requests: {} ok, {} errors in {:.2} s",
            self.ok, self.errors, self.elapsed_s
        );
        let _ = writeln!(s, "  throughput: {:.0} requests/s", self.requests_per_sec);
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1})",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        if self.errors > 0 {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let _ = writeln!(s, "  errors: {}", kinds.join(" "));
            if let Some(e) = &self.first_error {
                let _ = writeln!(s, "  first error: {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_errors_and_samples() {
        let mut a = Totals::new();
        a.record_ok(Duration::from_micros(10));
        a.record_error(ErrorKind::Timeout, 2, Some("slow".into()));
        let mut b = Totals::new();
        b.record_ok(Duration::from_micros(1000));
        b.record_error(ErrorKind::Timeout, 1, None);
        b.record_error(ErrorKind::ErrorStatus, 3, Some("boom".into()));
        a.merge(b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors[&ErrorKind::Timeout], 3);
        assert_eq!(a.errors[&ErrorKind::ErrorStatus], 3);
        assert_eq!(a.first_error.as_deref(), Some("timeout: slow"));
        assert_eq!(a.histogram.len(), 2);
        let s = LatencySummary::of(&a.histogram);
        assert!((9.9..=10.1).contains(&s.min), "{s:?}");
        assert!((999.0..=1001.0).contains(&s.max), "{s:?}");
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        let s = LatencySummary::of(&new_histogram());
        assert_eq!(s.p99, 0.0);
        assert_eq!(s.max, 0.0);
    }
}
