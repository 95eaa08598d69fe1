//! `metaproxy demo`: a self-contained tour of the proxy.
//!
//! Starts in-process Dubbo and Thrift echo backends (v1 with two endpoints, v2, shadow,
//! for each protocol) on loopback ephemeral ports, a proxy with the built-in config
//! ([`config::TEMPLATE`]: canary split 90/10, mirroring to shadow, routing by a Dubbo
//! attachment / Thrift header and by Thrift method, a request mutation), drives
//! pipelined traffic through it for `--duration` with a progress bar, verifies every
//! reply, and prints what happened: per protocol, route, cluster, endpoint, mirror and
//! local-reply reason, cross-checked between the clients, the backends' own counters and
//! the proxy's Prometheus metrics.

pub mod config;
pub mod report;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use indicatif::{ProgressBar, ProgressStyle};
use meta_protocol::{Message, MessageKind};
use metaproxy_thrift::frames::{call_payload, write_reply, FrameSpec};
use metaproxy_thrift::Protocol;

use crate::backend::{self, Backend, Responder};
use config::{Addresses, BACKENDS, DUBBO_LISTENER, THRIFT_LISTENER};
use report::{BackendCount, ProtocolRun, Report};
use traffic::{ClientStats, Proto};

/// Client connections per protocol.
const CONNECTIONS: usize = 4;
/// Requests in flight per client connection.
const PIPELINE: usize = 8;

/// Arguments of `metaproxy demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long to send traffic (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Print the built-in config (with conventional fixed addresses, ready for
    /// `metaproxy run --config`) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print the report as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Errors of `metaproxy demo`.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `--duration` out of range.
    #[error("--duration must be between 100ms and 1h, got {0:?}")]
    Duration(Duration),
    /// The tokio runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A demo backend could not bind a loopback port.
    #[error("cannot start the {protocol} backend {name} of cluster {cluster}: {source}")]
    Backend {
        /// Protocol.
        protocol: &'static str,
        /// Backend name.
        name: &'static str,
        /// Cluster.
        cluster: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The built-in config did not load (a bug of the demo).
    #[error("the built-in config is invalid: {0}")]
    Config(#[from] metaproxy::config::ConfigError),
    /// The proxy could not bind.
    #[error("cannot start the proxy: {0}")]
    Bind(#[from] metaproxy::BindError),
    /// The proxy bound, but a listener of the built-in config is missing.
    #[error("the proxy has no listener {0:?}")]
    MissingListener(&'static str),
    /// Some reply was wrong or some numbers did not add up.
    #[error("the demo failed: {}", .0.join("; "))]
    Failed(Vec<String>),
}

/// Runs `metaproxy demo`.
pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    if args.print_config {
        print!("{}", config::render(&Addresses::conventional()));
        return Ok(());
    }
    if args.duration < Duration::from_millis(100) || args.duration > Duration::from_secs(3600) {
        return Err(DemoError::Duration(args.duration));
    }
    let rt = metaproxy::runtime::build().map_err(DemoError::Runtime)?;
    let report = rt.block_on(drive(args.duration))?;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                return Err(DemoError::Failed(vec![format!(
                    "cannot write the JSON report: {e}"
                )]))
            }
        }
    } else {
        print!("{}", report.table());
    }
    if report.ok {
        Ok(())
    } else {
        Err(DemoError::Failed(
            report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect(),
        ))
    }
}

/// Thrift echo that also says which backend answered: the reply carries the call's
/// payload as its success value and, on the header transport, the call's headers plus
/// `backend: <name>`.
fn thrift_named_echo(name: &'static str) -> Responder {
    Arc::new(move |req: &Message, out: &mut BytesMut| {
        if req.kind() != MessageKind::Request {
            return;
        }
        let Some((t, p)) = metaproxy_thrift::split_wire(req.wire()) else {
            return;
        };
        let payload = call_payload(req).ok().flatten().unwrap_or_default();
        let mut headers: smallvec::SmallVec<[(&str, &str); 8]> = req
            .metadata()
            .iter()
            .filter(|(k, _)| *k != "method" && *k != "service")
            .collect();
        headers.push(("backend", name));
        // Request ids of thrift calls are their 32-bit sequence ids.
        let spec = FrameSpec::new(t, p, req.name(), req.request_id() as i32).with_headers(&headers);
        if let Err(e) = write_reply(&spec, &payload, out) {
            tracing::debug!(error = %e, "demo thrift backend cannot answer");
        }
    })
}

async fn start_backends() -> Result<Vec<Backend>, DemoError> {
    let mut out = Vec::with_capacity(BACKENDS.len());
    for slot in BACKENDS {
        let (factory, responder) = match slot.protocol {
            "dubbo" => (backend::dubbo_factory(), backend::dubbo_echo(slot.name)),
            _ => (backend::thrift_factory(), thrift_named_echo(slot.name)),
        };
        let b = backend::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            factory,
            Default::default(),
            responder,
        )
        .await
        .map_err(|source| DemoError::Backend {
            protocol: slot.protocol,
            name: slot.name,
            cluster: slot.cluster,
            source,
        })?;
        out.push(b);
    }
    Ok(out)
}

fn backend_requests(b: &Backend) -> u64 {
    b.stats().requests() + b.stats().one_way.load(Ordering::Relaxed)
}

fn progress_bar(duration: Duration) -> ProgressBar {
    let pb = ProgressBar::new(duration.as_millis() as u64);
    let style =
        ProgressStyle::with_template("{spinner} demo [{bar:32}] {elapsed:>3} / {len_secs}  {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let len_secs = format!("{:.0}s", duration.as_secs_f64().ceil());
    pb.set_style(style.with_key(
        "len_secs",
        move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&len_secs);
        },
    ));
    pb
}

/// `(listener, route, cluster)` for every cluster a route of a listener can pick.
fn route_targets(cfg: &metaproxy::config::Config) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let Some(rc) = cfg.route_configs.iter().find(|r| r.name == l.route_config) else {
            continue;
        };
        for (i, route) in rc.routes.iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| format!("route-{i}"));
            let clusters = route.route.cluster.iter().cloned().chain(
                route
                    .route
                    .weighted_clusters
                    .iter()
                    .flatten()
                    .map(|w| w.cluster.clone()),
            );
            for c in clusters {
                out.push((l.name.clone(), name.clone(), c));
            }
        }
    }
    out
}

async fn drive(duration: Duration) -> Result<Report, DemoError> {
    let backends = start_backends().await?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); BACKENDS.len()];
    for (a, b) in addrs.iter_mut().zip(&backends) {
        *a = b.addr();
    }
    let text = config::render(&Addresses::ephemeral(addrs));
    let cfg = metaproxy::config::parse(&text, "<demo config>".as_ref())?;
    let targets = route_targets(&cfg);
    let server = metaproxy::Server::new(cfg, metaproxy::default_registry())?;
    let running = server.bind().await?;
    let handle = running.handle();
    let dubbo_addr = running
        .local_addr(DUBBO_LISTENER)
        .ok_or(DemoError::MissingListener(DUBBO_LISTENER))?;
    let thrift_addr = running
        .local_addr(THRIFT_LISTENER)
        .ok_or(DemoError::MissingListener(THRIFT_LISTENER))?;

    // Traffic.
    let stop = Arc::new(AtomicBool::new(false));
    let done = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push((
            0,
            tokio::spawn(traffic::run_client(
                Proto::Dubbo,
                dubbo_addr,
                PIPELINE,
                stop.clone(),
                done[0].clone(),
            )),
        ));
        // Half the thrift clients speak binary, half compact; all on the header transport.
        let p = if i % 2 == 0 {
            Protocol::Binary
        } else {
            Protocol::Compact
        };
        clients.push((
            1,
            tokio::spawn(traffic::run_client(
                Proto::Thrift(p),
                thrift_addr,
                PIPELINE,
                stop.clone(),
                done[1].clone(),
            )),
        ));
    }
    let pb = progress_bar(duration);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let elapsed = started.elapsed().min(duration);
        let (d, t) = (
            done[0].load(Ordering::Relaxed),
            done[1].load(Ordering::Relaxed),
        );
        pb.set_position(elapsed.as_millis() as u64);
        pb.set_message(format!(
            "dubbo {d} · thrift {t} replies · {:.0} req/s",
            (d + t) as f64 / elapsed.as_secs_f64().max(0.001)
        ));
        if elapsed >= duration {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut stats = [ClientStats::default(), ClientStats::default()];
    for (proto, task) in clients {
        match task.await {
            Ok(s) => stats[proto].merge(&s),
            Err(e) => stats[proto].fatal = Some(format!("a client task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();

    // Mirrored copies are fire-and-forget: give the shadow backends a moment to see the
    // last ones the proxy sent.
    let shadows: Vec<(usize, &str)> = BACKENDS
        .iter()
        .enumerate()
        .filter(|(_, b)| b.name == "shadow")
        .map(|(i, b)| (i, b.cluster))
        .collect();
    let settle = Instant::now() + Duration::from_secs(3);
    let mut metrics = report::parse_prometheus(&handle.metrics_text());
    loop {
        let settled = shadows.iter().all(|(i, cluster)| {
            let sent = report::total(
                &metrics,
                "metaproxy_mirror_requests_total",
                &[("cluster", cluster), ("result", "sent")],
            );
            backends.get(*i).map_or(0, backend_requests) >= sent
        });
        if settled || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = report::parse_prometheus(&handle.metrics_text());
    }
    let counts: Vec<BackendCount> = BACKENDS
        .iter()
        .zip(&backends)
        .map(|(slot, b)| BackendCount {
            slot: *slot,
            address: b.addr().to_string(),
            requests: backend_requests(b),
        })
        .collect();

    let runs = [
        ProtocolRun {
            protocol: "dubbo",
            listener: DUBBO_LISTENER,
            address: dubbo_addr.to_string(),
            connections: CONNECTIONS,
            pipeline: PIPELINE,
            stats: &stats[0],
        },
        ProtocolRun {
            protocol: "thrift",
            listener: THRIFT_LISTENER,
            address: thrift_addr.to_string(),
            connections: CONNECTIONS,
            pipeline: PIPELINE,
            stats: &stats[1],
        },
    ];
    let report = report::build(elapsed, &targets, &runs, &counts, &metrics);

    // Clients are gone, so draining is quick; do not wait long on anything left.
    let _ = tokio::time::timeout(Duration::from_secs(3), running.shutdown()).await;
    for b in &backends {
        b.stop();
    }
    Ok(report)
}
