//! metaproxy against an xDS management server this project did not write: an ADS
//! server on Envoy's published Python API types (`envoy-data-plane`) and `grpclib`
//! (xds/interop/ads_server.py, installed by scripts/interop/xds.sh), with kv traffic
//! running through the proxy the whole time.
//!
//! Run with `cargo test -p metaproxy-xds --features interop --test interop_xds -- --nocapture`
//! to see the measured update latencies.
#![cfg(feature = "interop")]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ROUTE_URL: &str =
    "type.googleapis.com/aeraki.meta_protocol_proxy.config.route.v1alpha.RouteConfiguration";
const CLUSTER_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The Python ADS server process.
struct ControlPlane {
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    /// Every event read so far.
    log: Vec<Value>,
    port: u16,
}

impl ControlPlane {
    /// Starts the server on `port` (0: any) serving `state` (a `set` command) from the
    /// start.
    async fn start(port: u16, state: Value) -> ControlPlane {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../.interop/xds/venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/interop/xds.sh first",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(root.join("interop/ads_server.py"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let events = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut cp = ControlPlane {
            child,
            stdin,
            events,
            log: Vec::new(),
            port: 0,
        };
        cp.command(state).await;
        let first = cp.event(Duration::from_secs(20)).await;
        assert_eq!(first["event"], "listening", "{first}");
        cp.port = first["port"].as_u64().unwrap() as u16;
        cp
    }

    async fn event(&mut self, wait: Duration) -> Value {
        let line = tokio::time::timeout(wait, self.events.next_line())
            .await
            .expect("no event from the control plane in time")
            .unwrap()
            .expect("the control plane exited");
        serde_json::from_str(&line).unwrap()
    }

    async fn command(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the proxy's answer to `type_url` at `version`: Ok with the time from the
    /// response sent to the ACK received (on the server's clock) for an ACK, Err with the
    /// reason for a NACK. Events of other types read meanwhile are kept for later.
    async fn answer(&mut self, type_url: &str, version: &str) -> Result<Duration, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sent: Vec<&Value> = self
                .log
                .iter()
                .filter(|e| {
                    e["event"] == "sent" && e["type"] == type_url && e["version"] == version
                })
                .collect();
            let reply = self.log.iter().find_map(|e| {
                let answered = sent.iter().find(|s| s["nonce"] == e["nonce"])?;
                (e["event"] == "request" && e["type"] == type_url).then_some((e, *answered))
            });
            if let Some((e, answered)) = reply {
                return match e["error"].as_str() {
                    None => {
                        assert_eq!(e["version"], version, "an ACK carries the new version");
                        let seconds = e["t"].as_f64().unwrap() - answered["t"].as_f64().unwrap();
                        Ok(Duration::from_secs_f64(seconds.max(0.0)))
                    }
                    Some(reason) => Err(reason.to_owned()),
                };
            }
            let e = self
                .event(deadline.saturating_duration_since(Instant::now()))
                .await;
            self.log.push(e);
        }
    }

    async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

/// Counts of successful replies by backend name ("" = a reply of the proxy itself).
#[derive(Default)]
struct Tally {
    by_backend: HashMap<String, u64>,
}

/// Continuous load: `connections` clients calling `service: canary` back to back.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    /// Requests sent and requests failed (no reply, or an error reply), never reset.
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..connections)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let (sent, failed) = (sent.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut client = KvClient::connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        let reply = client.call("canary").await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        match reply {
                            Some((0, backend)) if !backend.is_empty() => {
                                *tally.lock().unwrap().by_backend.entry(backend).or_default() += 1
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            sent,
            failed,
            tasks,
        }
    }

    /// Takes the counts so far and starts from zero.
    fn take(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().unwrap())
    }

    /// Stops; returns (sent, failed).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn share(t: &Tally, backends: &[&str]) -> f64 {
    let total: u64 = t.by_backend.values().sum();
    let hits: u64 = backends
        .iter()
        .map(|b| t.by_backend.get(*b).copied().unwrap_or(0))
        .sum();
    hits as f64 / total.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_control_plane_drives_the_proxy_under_load() {
    let began = Instant::now();
    let (a1, a2, a3, b1) = (
        backend("a1").await,
        backend("a2").await,
        backend("a3").await,
        backend("b1").await,
    );
    let addr = |b: &Backend| b.addr.to_string();
    // (step, command written -> ACK read, response sent -> ACK received)
    let mut latencies: Vec<(&str, Duration, Duration)> = Vec::new();

    // Version 1: cluster v1 = [a1], v2 = [b1], canary 90/10.
    let state = |version: &str, v1: Vec<String>, split: (u32, u32)| {
        json!({"cmd": "set", "version": version, "clusters": ["v1", "v2"],
               "endpoints": {"v1": v1, "v2": [addr(&b1)]},
               "routes": {"kv-routes": [["v1", split.0], ["v2", split.1]]}})
    };
    let mut cp = ControlPlane::start(0, state("1", vec![addr(&a1)], (90, 10))).await;
    let proxy = proxy(&proxy_yaml(
        format!("127.0.0.1:{}", cp.port).parse().unwrap(),
    ))
    .await;
    let handle = proxy.handle();
    let client = metaproxy_xds::spawn_if_configured(&handle).unwrap();
    let listener = proxy.local_addr("kv-in").unwrap();
    for url in [CLUSTER_URL, ENDPOINT_URL, ROUTE_URL] {
        cp.answer(url, "1").await.unwrap();
    }
    let mut probe = KvClient::connect(listener).await;
    let first = eventually(&mut probe, "canary", |r| r.0 == 0).await;
    assert_eq!(first.0, 0, "routes from the control plane serve");

    let load = Load::start(listener, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Endpoints added, then the first removed, under load.
    let t = Instant::now();
    cp.command(state("2", vec![addr(&a1), addr(&a2), addr(&a3)], (90, 10)))
        .await;
    let applied = cp.answer(ENDPOINT_URL, "2").await.unwrap();
    latencies.push(("two endpoints added", t.elapsed(), applied));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a2.received() > 0 && a3.received() > 0,
        "new endpoints take traffic"
    );
    let t = Instant::now();
    cp.command(state("3", vec![addr(&a2), addr(&a3)], (90, 10)))
        .await;
    let applied = cp.answer(ENDPOINT_URL, "3").await.unwrap();
    latencies.push(("one endpoint removed", t.elapsed(), applied));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a1_after_removal = a1.received();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a1.received(),
        a1_after_removal,
        "a removed endpoint gets no new requests"
    );

    // Canary 90/10 observed, then 10/90.
    load.take();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = load.take();
    let v1_share = share(&before, &["a2", "a3"]);
    assert!(
        (0.82..=0.97).contains(&v1_share),
        "90/10: v1 share {v1_share}"
    );
    let t = Instant::now();
    cp.command(state("4", vec![addr(&a2), addr(&a3)], (10, 90)))
        .await;
    let applied = cp.answer(ROUTE_URL, "4").await.unwrap();
    latencies.push(("canary 90/10 -> 10/90", t.elapsed(), applied));
    load.take();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = load.take();
    let v2_share = share(&after, &["b1"]);
    assert!(
        (0.82..=0.97).contains(&v2_share),
        "10/90: v2 share {v2_share}"
    );

    // A bad resource is NACKed with the reason; traffic continues on 10/90.
    cp.command(json!({"cmd": "bad_route", "version": "5"}))
        .await;
    let reason = cp.answer(ROUTE_URL, "5").await.unwrap_err();
    assert!(reason.contains("range_match"), "{reason}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during_nack = load.take();
    assert!(share(&during_nack, &["b1"]) > 0.8);
    assert_eq!(
        handle.provenance().route_configs["kv-routes"]
            .version
            .as_deref(),
        Some("4")
    );

    // The control plane dies; traffic continues; it comes back and a new update applies.
    let port = cp.kill().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let while_down = load.take();
    assert!(while_down.by_backend.values().sum::<u64>() > 0);
    // It comes back serving what it served before it died (as a control plane that
    // rebuilds its state from its sources does).
    let mut cp = ControlPlane::start(port, state("4", vec![addr(&a2), addr(&a3)], (10, 90))).await;
    let t = Instant::now();
    let reconnect = cp.event(Duration::from_secs(5)).await;
    assert_eq!(reconnect["event"], "request", "{reconnect}");
    assert_eq!(
        reconnect["nonce"], "",
        "a new stream starts without a nonce"
    );
    println!(
        "xds interop: control plane back -> first request of the new stream: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    cp.command(state("6", vec![addr(&a2), addr(&a3)], (50, 50)))
        .await;
    let applied = cp.answer(ROUTE_URL, "6").await.unwrap();
    latencies.push(("after restart, canary -> 50/50", t.elapsed(), applied));
    load.take();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_restart = load.take();
    let half = share(&after_restart, &["b1"]);
    assert!((0.35..=0.65).contains(&half), "50/50: v2 share {half}");

    let (sent, failed) = load.stop().await;
    println!("xds interop: {sent} requests over 4 connections, {failed} failed");
    for (what, command_to_ack, sent_to_ack) in &latencies {
        println!(
            "xds interop: {what}: command -> ACK {:.1} ms, response sent -> ACK {:.1} ms",
            command_to_ack.as_secs_f64() * 1000.0,
            sent_to_ack.as_secs_f64() * 1000.0
        );
    }
    println!(
        "xds interop: whole scenario {:.1} s",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(failed, 0, "no request failed during the updates");
    client.shutdown().await;
}
