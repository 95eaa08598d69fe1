//! The demo's report: proxy metrics (parsed from the Prometheus text), backend counters
//! and what the clients saw, cross-checked, as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::config::{BackendSlot, CANARY_ROUTE};
use super::traffic::ClientStats;

/// One sample of the Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with any `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Label pairs, unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of a Prometheus text exposition; comments and lines that do not
/// parse are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line.get(..name_end)?.to_owned();
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' if key.is_empty() => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c if c.is_whitespace() => {}
                c => key.push(c),
            }
        }
        let consumed = chars.next().map_or(after.len(), |(i, _)| i);
        rest = after.get(consumed..)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of the samples named `name` whose labels include every pair of `filter`.
pub fn total(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> u64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum::<f64>() as u64
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// What the clients of one protocol saw.
#[derive(Clone, Debug, Serialize)]
pub struct ProtocolReport {
    /// `dubbo` or `thrift`.
    pub protocol: String,
    /// The proxy listener the clients used.
    pub listener: String,
    /// Its address.
    pub address: String,
    /// Client connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Requests sent.
    pub sent: u64,
    /// Verified replies from backends.
    pub ok: u64,
    /// Local replies of the proxy by reason.
    pub local_replies: BTreeMap<String, u64>,
    /// Wrong or missing replies.
    pub errors: u64,
    /// Every reply that was not what the demo expects (errors, local replies to routed
    /// requests, stray replies). Non-zero fails the demo.
    pub wrong_replies: u64,
    /// Requests sent per kind: `canary`, `beta`, `unknown`.
    pub sent_by_kind: BTreeMap<String, u64>,
    /// Verified replies per backend name.
    pub replies_by_backend: BTreeMap<String, u64>,
    /// Replies per second.
    pub requests_per_second: f64,
    /// Reply latency seen by the clients (pipelined, so it includes queueing).
    pub latency_ms: Latency,
    /// The first few problems.
    pub error_samples: Vec<String>,
}

/// `metaproxy_requests_total` of one listener, route and cluster.
#[derive(Clone, Debug, Serialize)]
pub struct RouteRow {
    /// Listener.
    pub listener: String,
    /// Route name.
    pub route: String,
    /// Cluster picked.
    pub cluster: String,
    /// Requests.
    pub requests: u64,
}

/// One endpoint: a backend the demo started.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointRow {
    /// The backend's name (`v1-a`, `v2`, `shadow`...).
    pub backend: String,
    /// Its address.
    pub address: String,
    /// Requests the backend received (its own counter).
    pub requests: u64,
    /// Replies from it that clients verified (0 for shadow: mirror replies are dropped).
    pub client_replies: u64,
}

/// One cluster.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterRow {
    /// `dubbo` or `thrift`.
    pub protocol: String,
    /// Cluster name.
    pub cluster: String,
    /// Whether it only receives mirrored copies.
    pub shadow: bool,
    /// `metaproxy_requests_total` for the cluster (0 for a mirror-only cluster).
    pub proxy_requests: u64,
    /// `metaproxy_responses_total{status="ok"}` for the cluster.
    pub proxy_responses_ok: u64,
    /// Sum of the endpoints' backend counters.
    pub backend_requests: u64,
    /// Endpoints.
    pub endpoints: Vec<EndpointRow>,
}

/// Mirroring into one shadow cluster.
#[derive(Clone, Debug, Serialize)]
pub struct MirrorRow {
    /// The listener whose route mirrors.
    pub listener: String,
    /// The mirroring route.
    pub route: String,
    /// The shadow cluster.
    pub cluster: String,
    /// `metaproxy_mirror_requests_total{result="sent"}`.
    pub sent: u64,
    /// `metaproxy_mirror_requests_total{result="dropped"}`.
    pub dropped: u64,
    /// Requests the shadow backends received.
    pub received: u64,
    /// Requests of the mirroring route (`metaproxy_requests_total`).
    pub route_requests: u64,
}

/// `metaproxy_local_replies_total` of one listener and reason.
#[derive(Clone, Debug, Serialize)]
pub struct LocalRow {
    /// Listener.
    pub listener: String,
    /// Reason.
    pub reason: String,
    /// The proxy's count.
    pub count: u64,
    /// What the clients counted.
    pub seen_by_clients: u64,
}

/// One cross-check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it holds.
    pub ok: bool,
    /// The numbers.
    pub detail: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every check passed and every reply was right.
    pub ok: bool,
    /// How long traffic was sent.
    pub duration_seconds: f64,
    /// Per protocol, what the clients saw.
    pub protocols: Vec<ProtocolReport>,
    /// Proxy requests per route and cluster.
    pub routes: Vec<RouteRow>,
    /// Clusters and endpoints.
    pub clusters: Vec<ClusterRow>,
    /// Mirroring.
    pub mirrors: Vec<MirrorRow>,
    /// Local replies.
    pub local_replies: Vec<LocalRow>,
    /// Cross-checks.
    pub checks: Vec<Check>,
}

/// The inputs of one protocol.
pub struct ProtocolRun<'a> {
    /// `dubbo` or `thrift`.
    pub protocol: &'static str,
    /// Listener name.
    pub listener: &'static str,
    /// Listener address.
    pub address: String,
    /// Client connections and depth.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Merged client stats.
    pub stats: &'a ClientStats,
}

/// One backend's final counter.
pub struct BackendCount {
    /// Its slot in the config.
    pub slot: BackendSlot,
    /// Its address.
    pub address: String,
    /// Requests it received (two-way and one-way).
    pub requests: u64,
}

fn millis(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

fn check(checks: &mut Vec<Check>, name: String, ok: bool, detail: String) {
    checks.push(Check { name, ok, detail });
}

/// Cross-checks clients, backends and proxy metrics.
///
/// `targets` lists the `(listener, route, cluster)` triples the config can route to
/// (the proxy exports a series for every pair, most of them zero).
pub fn build(
    duration: std::time::Duration,
    targets: &[(String, String, String)],
    runs: &[ProtocolRun<'_>],
    backends: &[BackendCount],
    metrics: &[Sample],
) -> Report {
    let secs = duration.as_secs_f64().max(1e-9);
    let mut protocols = Vec::new();
    let mut routes = Vec::new();
    let mut clusters = Vec::new();
    let mut mirrors = Vec::new();
    let mut local_replies = Vec::new();
    let mut checks = Vec::new();

    for run in runs {
        let s = run.stats;
        let p = run.protocol;
        let lat = &s.latency;
        protocols.push(ProtocolReport {
            protocol: p.to_owned(),
            listener: run.listener.to_owned(),
            address: run.address.clone(),
            connections: run.connections,
            pipeline: run.pipeline,
            sent: s.sent,
            ok: s.ok,
            local_replies: s.local.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            errors: s.errors,
            wrong_replies: s.wrong(),
            sent_by_kind: [("canary", 0), ("beta", 1), ("unknown", 2)]
                .iter()
                .map(|(k, i)| {
                    (
                        (*k).to_owned(),
                        s.sent_by_kind.get(*i).copied().unwrap_or(0),
                    )
                })
                .collect(),
            replies_by_backend: s.by_backend.clone(),
            requests_per_second: ((s.ok + s.local_total()) as f64 / secs).round(),
            latency_ms: Latency {
                p50: millis(lat.value_at_quantile(0.5)),
                p99: millis(lat.value_at_quantile(0.99)),
                max: millis(lat.max()),
            },
            error_samples: s.samples.clone(),
        });

        // Routes of this listener, as the proxy counted them.
        let mut route_rows: Vec<RouteRow> = metrics
            .iter()
            .filter(|m| {
                m.name == "metaproxy_requests_total" && m.label("listener") == Some(run.listener)
            })
            .filter(|m| {
                targets.iter().any(|(l, r, c)| {
                    l == run.listener
                        && m.label("route") == Some(r)
                        && m.label("cluster") == Some(c)
                })
            })
            .map(|m| RouteRow {
                listener: run.listener.to_owned(),
                route: m.label("route").unwrap_or_default().to_owned(),
                cluster: m.label("cluster").unwrap_or_default().to_owned(),
                requests: m.value as u64,
            })
            .collect();
        route_rows.sort_by(|a, b| (&a.route, &a.cluster).cmp(&(&b.route, &b.cluster)));
        let routed: u64 = route_rows.iter().map(|r| r.requests).sum();
        let canary_requests: u64 = route_rows
            .iter()
            .filter(|r| r.route == CANARY_ROUTE)
            .map(|r| r.requests)
            .sum();
        routes.extend(route_rows);

        // Clusters and endpoints of this protocol.
        let mut names: Vec<&str> = Vec::new();
        for b in backends.iter().filter(|b| b.slot.protocol == p) {
            if !names.contains(&b.slot.cluster) {
                names.push(b.slot.cluster);
            }
        }
        let mut backend_routed = 0;
        for name in names {
            let shadow = name.ends_with("-shadow");
            let endpoints: Vec<EndpointRow> = backends
                .iter()
                .filter(|b| b.slot.protocol == p && b.slot.cluster == name)
                .map(|b| EndpointRow {
                    backend: b.slot.name.to_owned(),
                    address: b.address.clone(),
                    requests: b.requests,
                    client_replies: if shadow {
                        0
                    } else {
                        s.by_backend.get(b.slot.name).copied().unwrap_or(0)
                    },
                })
                .collect();
            let backend_requests: u64 = endpoints.iter().map(|e| e.requests).sum();
            if !shadow {
                backend_routed += backend_requests;
                for e in &endpoints {
                    check(
                        &mut checks,
                        format!(
                            "{p}: replies clients verified from {name}/{} = requests it counted",
                            e.backend
                        ),
                        e.client_replies == e.requests,
                        format!("{} = {}", e.client_replies, e.requests),
                    );
                }
            } else {
                let sent = total(
                    metrics,
                    "metaproxy_mirror_requests_total",
                    &[("cluster", name), ("result", "sent")],
                );
                let dropped = total(
                    metrics,
                    "metaproxy_mirror_requests_total",
                    &[("cluster", name), ("result", "dropped")],
                );
                check(
                    &mut checks,
                    format!("{p}: {name} received = mirrored copies sent"),
                    backend_requests == sent,
                    format!("{backend_requests} = {sent}"),
                );
                check(
                    &mut checks,
                    format!("{p}: mirrored (sent + dropped) = requests of route {CANARY_ROUTE} (mirror 100%)"),
                    sent + dropped == canary_requests,
                    format!("{sent} + {dropped} = {canary_requests}"),
                );
                mirrors.push(MirrorRow {
                    listener: run.listener.to_owned(),
                    route: CANARY_ROUTE.to_owned(),
                    cluster: name.to_owned(),
                    sent,
                    dropped,
                    received: backend_requests,
                    route_requests: canary_requests,
                });
            }
            clusters.push(ClusterRow {
                protocol: p.to_owned(),
                cluster: name.to_owned(),
                shadow,
                proxy_requests: total(
                    metrics,
                    "metaproxy_requests_total",
                    &[("listener", run.listener), ("cluster", name)],
                ),
                proxy_responses_ok: total(
                    metrics,
                    "metaproxy_responses_total",
                    &[
                        ("listener", run.listener),
                        ("cluster", name),
                        ("status", "ok"),
                    ],
                ),
                backend_requests,
                endpoints,
            });
        }

        // Local replies.
        let mut reasons: Vec<String> = metrics
            .iter()
            .filter(|m| {
                m.name == "metaproxy_local_replies_total"
                    && m.label("listener") == Some(run.listener)
            })
            .filter_map(|m| m.label("reason").map(str::to_owned))
            .collect();
        reasons.extend(s.local.keys().map(|k| (*k).to_owned()));
        reasons.sort();
        reasons.dedup();
        let mut local_metric = 0;
        for reason in reasons {
            let count = total(
                metrics,
                "metaproxy_local_replies_total",
                &[("listener", run.listener), ("reason", &reason)],
            );
            let seen = s.local.get(reason.as_str()).copied().unwrap_or(0);
            local_metric += count;
            if count > 0 || seen > 0 {
                local_replies.push(LocalRow {
                    listener: run.listener.to_owned(),
                    reason,
                    count,
                    seen_by_clients: seen,
                });
            }
        }

        // The books must balance.
        check(
            &mut checks,
            format!("{p}: sent = ok + local replies + errors"),
            s.sent == s.ok + s.local_total() + s.errors,
            format!("{} = {} + {} + {}", s.sent, s.ok, s.local_total(), s.errors),
        );
        check(
            &mut checks,
            format!("{p}: backend requests (v1 + v2) = routed requests (metaproxy_requests_total)"),
            backend_routed == routed,
            format!("{backend_routed} = {routed}"),
        );
        check(
            &mut checks,
            format!("{p}: local replies seen by clients = metaproxy_local_replies_total"),
            s.local_total() == local_metric,
            format!("{} = {local_metric}", s.local_total()),
        );
        let unknown = s.sent_by_kind.get(2).copied().unwrap_or(0);
        let no_route = s.local.get("no_route").copied().unwrap_or(0);
        check(
            &mut checks,
            format!("{p}: requests to an unrouted service = no_route local replies"),
            unknown == no_route && no_route > 0,
            format!("{unknown} = {no_route}"),
        );
        check(
            &mut checks,
            format!("{p}: every reply verified (payload, backend, mutation, local reply)"),
            s.wrong() == 0 && s.fatal.is_none(),
            match &s.fatal {
                Some(f) => f.clone(),
                None => format!("{} wrong", s.wrong()),
            },
        );
    }

    let ok = checks.iter().all(|c| c.ok);
    Report {
        ok,
        duration_seconds: duration.as_secs_f64(),
        protocols,
        routes,
        clusters,
        mirrors,
        local_replies,
        checks,
    }
}

/// A plain-text table: the first `left` columns left-aligned, the rest right-aligned.
fn table(out: &mut String, headers: &[&str], left: usize, rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("  ");
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "{cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(out, &mut headers.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(out, &mut rule.iter().map(String::as_str));
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

impl Report {
    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let listeners: Vec<String> = self
            .protocols
            .iter()
            .map(|p| format!("{} on {}", p.listener, p.address))
            .collect();
        let _ = writeln!(
            out,
            "metaproxy demo: {:.1}s of traffic through {}\n",
            self.duration_seconds,
            listeners.join(", ")
        );

        let _ = writeln!(
            out,
            "Built-in config (print it with `metaproxy demo --print-config`)"
        );
        let rows: Vec<Vec<String>> = [
            ["dubbo-in", "user=beta (attachment)", "v2", "x-route: beta"],
            [
                "",
                "com.example.DemoService",
                "v1 90% / v2 10%, mirror to shadow",
                "x-proxied-by: metaproxy",
            ],
            [
                "",
                "any other interface",
                "local reply SERVICE_NOT_FOUND",
                "",
            ],
            ["thrift-in", "user=beta (header)", "v2", "x-route: beta"],
            [
                "",
                "EchoService:echo|ping",
                "v1 90% / v2 10%, mirror to shadow",
                "x-proxied-by: metaproxy",
            ],
            ["", "any other method", "local reply UNKNOWN_METHOD", ""],
        ]
        .iter()
        .map(|r| r.iter().map(|c| (*c).to_owned()).collect())
        .collect();
        table(
            &mut out,
            &["listener", "match", "route", "request mutation"],
            4,
            &rows,
        );
        let _ = writeln!(
            out,
            "  traffic mix: 85% canary route, 10% beta users, 5% unrouted service; every reply verified\n"
        );

        let _ = writeln!(out, "Traffic (as the clients saw it)");
        let rows: Vec<Vec<String>> = self
            .protocols
            .iter()
            .map(|p| {
                vec![
                    p.protocol.clone(),
                    format!("{}x{}", p.connections, p.pipeline),
                    p.sent.to_string(),
                    p.ok.to_string(),
                    p.local_replies.values().sum::<u64>().to_string(),
                    p.errors.to_string(),
                    format!("{:.0}", p.requests_per_second),
                    format!("{:.2} ms", p.latency_ms.p50),
                    format!("{:.2} ms", p.latency_ms.p99),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "protocol",
                "conns x depth",
                "sent",
                "ok",
                "local replies",
                "errors",
                "req/s",
                "p50",
                "p99",
            ],
            2,
            &rows,
        );

        let _ = writeln!(out, "\nRoutes (metaproxy_requests_total)");
        let route_total = |listener: &str, route: &str| -> u64 {
            self.routes
                .iter()
                .filter(|r| r.listener == listener && r.route == route)
                .map(|r| r.requests)
                .sum()
        };
        let rows: Vec<Vec<String>> = self
            .routes
            .iter()
            .map(|r| {
                vec![
                    r.listener.clone(),
                    r.route.clone(),
                    r.cluster.clone(),
                    r.requests.to_string(),
                    pct(r.requests, route_total(&r.listener, &r.route)),
                ]
            })
            .collect();
        table(
            &mut out,
            &["listener", "route", "cluster", "requests", "share of route"],
            3,
            &rows,
        );

        let _ = writeln!(out, "\nClusters and endpoints (backend counters)");
        let mut rows = Vec::new();
        for c in &self.clusters {
            for (i, e) in c.endpoints.iter().enumerate() {
                rows.push(vec![
                    if i == 0 {
                        c.cluster.clone()
                    } else {
                        String::new()
                    },
                    e.address.clone(),
                    e.backend.clone(),
                    e.requests.to_string(),
                    if c.shadow {
                        "(mirror: dropped)".into()
                    } else {
                        e.client_replies.to_string()
                    },
                    match (i, c.shadow) {
                        (0, false) => c.proxy_requests.to_string(),
                        (0, true) => "(mirror only)".into(),
                        _ => String::new(),
                    },
                ]);
            }
        }
        table(
            &mut out,
            &[
                "cluster",
                "endpoint",
                "backend",
                "backend requests",
                "replies verified",
                "proxy requests",
            ],
            3,
            &rows,
        );

        let _ = writeln!(out, "\nMirroring (metaproxy_mirror_requests_total)");
        let rows: Vec<Vec<String>> = self
            .mirrors
            .iter()
            .map(|m| {
                vec![
                    format!("{}/{}", m.listener, m.route),
                    m.cluster.clone(),
                    m.route_requests.to_string(),
                    m.sent.to_string(),
                    m.dropped.to_string(),
                    m.received.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "route",
                "shadow cluster",
                "route requests",
                "copies sent",
                "dropped",
                "received by shadow",
            ],
            2,
            &rows,
        );

        let _ = writeln!(out, "\nLocal replies (metaproxy_local_replies_total)");
        if self.local_replies.is_empty() {
            let _ = writeln!(out, "  none");
        } else {
            let rows: Vec<Vec<String>> = self
                .local_replies
                .iter()
                .map(|l| {
                    vec![
                        l.listener.clone(),
                        l.reason.clone(),
                        l.count.to_string(),
                        l.seen_by_clients.to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &["listener", "reason", "proxy", "seen by clients"],
                2,
                &rows,
            );
        }

        let _ = writeln!(out, "\nChecks");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        for p in &self.protocols {
            for s in &p.error_samples {
                let _ = writeln!(out, "  {}: {s}", p.protocol);
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.ok {
                "All numbers add up; every reply was verified."
            } else {
                "SOME CHECKS FAILED (see above)."
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_plain_samples() {
        let text = "# HELP x y\n# TYPE x counter\n\
            metaproxy_requests_total{listener=\"in\",route=\"r\\\"1\",cluster=\"c\"} 42\n\
            metaproxy_config_reloads_total 3\n\
            metaproxy_request_duration_seconds_bucket{listener=\"in\",cluster=\"c\",le=\"+Inf\"} 7\n";
        let s = parse_prometheus(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("route"), Some("r\"1"));
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].name, "metaproxy_config_reloads_total");
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert_eq!(
            total(&s, "metaproxy_requests_total", &[("cluster", "c")]),
            42
        );
        assert_eq!(
            total(&s, "metaproxy_requests_total", &[("cluster", "d")]),
            0
        );
    }

    #[test]
    fn parses_the_real_exposition() {
        let m = metaproxy::observe::Metrics::new();
        m.request("dubbo-in", "canary", "dubbo-v1").add(5);
        m.cluster("dubbo-shadow").mirror_sent.add(4);
        let s = parse_prometheus(&m.render());
        assert_eq!(
            total(&s, "metaproxy_requests_total", &[("route", "canary")]),
            5
        );
        assert_eq!(
            total(
                &s,
                "metaproxy_mirror_requests_total",
                &[("cluster", "dubbo-shadow"), ("result", "sent")]
            ),
            4
        );
    }

    fn slot(i: usize) -> BackendCount {
        let slot = super::super::config::BACKENDS[i];
        BackendCount {
            slot,
            address: format!("127.0.0.1:{}", slot.port),
            requests: 0,
        }
    }

    #[test]
    fn build_balances_the_books_and_flags_what_does_not_add_up() {
        let metrics = parse_prometheus(
            "metaproxy_requests_total{listener=\"dubbo-in\",route=\"canary\",cluster=\"dubbo-v1\"} 9\n\
             metaproxy_requests_total{listener=\"dubbo-in\",route=\"canary\",cluster=\"dubbo-v2\"} 1\n\
             metaproxy_mirror_requests_total{cluster=\"dubbo-shadow\",result=\"sent\"} 10\n\
             metaproxy_local_replies_total{listener=\"dubbo-in\",reason=\"no_route\"} 1\n",
        );
        let targets: Vec<(String, String, String)> = ["dubbo-v1", "dubbo-v2"]
            .iter()
            .map(|c| ("dubbo-in".to_owned(), "canary".to_owned(), (*c).to_owned()))
            .collect();
        let mut stats = ClientStats {
            sent: 11,
            ok: 10,
            sent_by_kind: [10, 0, 1],
            ..Default::default()
        };
        stats.local.insert("no_route", 1);
        stats.by_backend.insert("v1-a".into(), 9);
        stats.by_backend.insert("v2".into(), 1);
        let mut backends: Vec<BackendCount> = (0..4).map(slot).collect();
        for (b, n) in backends.iter_mut().zip([9, 0, 1, 10]) {
            b.requests = n;
        }
        let run = |stats: &ClientStats, backends: &[BackendCount]| {
            let runs = [ProtocolRun {
                protocol: "dubbo",
                listener: "dubbo-in",
                address: "127.0.0.1:20880".into(),
                connections: 1,
                pipeline: 1,
                stats,
            }];
            build(
                std::time::Duration::from_secs(1),
                &targets,
                &runs,
                backends,
                &metrics,
            )
        };
        let good = run(&stats, &backends);
        assert!(good.ok, "{:#?}", good.checks);
        assert_eq!(good.routes.len(), 2);
        assert_eq!(good.mirrors[0].received, 10);

        // The shadow missed a copy.
        backends[3].requests = 9;
        let bad = run(&stats, &backends);
        assert!(!bad.ok);
        let failed: Vec<&str> = bad
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            failed,
            ["dubbo: dubbo-shadow received = mirrored copies sent"]
        );
        backends[3].requests = 10;

        // A reply went missing without being counted.
        stats.sent += 1;
        let bad = run(&stats, &backends);
        assert!(bad
            .checks
            .iter()
            .any(|c| !c.ok && c.name.contains("sent = ok + local replies + errors")));
    }

    #[test]
    fn table_aligns_columns() {
        let mut out = String::new();
        table(
            &mut out,
            &["a", "n"],
            1,
            &[
                vec!["long name".into(), "5".into()],
                vec!["x".into(), "1234".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "  a             n");
        assert_eq!(lines[2], "  long name     5");
        assert_eq!(lines[3], "  x          1234");
    }
}
