//! End-to-end harness behind `scripts/bench-e2e.sh` (run that script, not this file).
//!
//! It measures, on loopback, what a request costs (a) straight to an echo backend,
//! (b) through `metaproxy run` with a real route (metadata match + weighted 90/10 split
//! over two backends) and (c) through HAProxy in TCP mode (same two backends, weights
//! 9/1), for a matrix of connections × pipeline depth × payload per protocol. Each case
//! runs the three targets in turn, for several rounds (`--rounds`, 3 by default), and
//! reports each target's median round, so that one disturbed run does not decide a
//! case on a noisy machine. Load comes from `metaproxy bench
//! --json` in its own process; the proxy's CPU time comes from `/proc/PID/stat` deltas
//! and its memory from `/proc/PID/status`. It also measures the proxy's idle RSS, its
//! RSS with 10,000 idle client connections, and the cost per connection. It writes
//! `report.md`, `results.json` and SVG charts to the output directory.
//!
//! Under plain `cargo bench` (no `--e2e` flag) it prints how to run it and exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metaproxy_cli::backend::{self, Backend, BackendStats};
use serde::Serialize;

#[derive(Debug, Clone)]
struct Opts {
    metaproxy: PathBuf,
    haproxy: Option<PathBuf>,
    out: PathBuf,
    quick: bool,
    /// Payload sizes to run (default: 128 in quick mode, else 128 and 4096).
    payloads: Vec<usize>,
    duration: Duration,
    /// Runs of each target per case, the targets alternating (direct, metaproxy,
    /// haproxy, direct, ...); the report gives each target's median run.
    rounds: usize,
    protocols: Vec<String>,
    pin: bool,
    idle_connections: usize,
    perf: bool,
    callgrind: bool,
    serve: bool,
    /// Count the proxies' read and write syscalls per run (`perf stat` tracepoints).
    syscalls: bool,
    /// Run only the two multiplexing cases (1 connection × 64, 256 × 4 to one backend).
    only_multiplexing_cases: bool,
    /// Run the echo backends under SCHED_BATCH (`chrt -b`), so that a backend woken by
    /// the proxy's write does not preempt the proxy on their shared core: a diagnostic
    /// of what co-location costs each proxy, not the default.
    backends_batch: bool,
}

fn parse_opts() -> Result<Option<Opts>> {
    let mut args = std::env::args().skip(1);
    let mut e2e = false;
    let mut o = Opts {
        metaproxy: PathBuf::from("target/release/metaproxy"),
        haproxy: None,
        out: PathBuf::from("target/bench-report"),
        quick: false,
        payloads: Vec::new(),
        duration: Duration::ZERO,
        rounds: 0,
        protocols: vec!["dubbo".into(), "thrift".into()],
        pin: true,
        idle_connections: 10_000,
        perf: false,
        callgrind: false,
        serve: false,
        syscalls: true,
        only_multiplexing_cases: false,
        backends_batch: false,
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().context(format!("{a} needs a value"));
        match a.as_str() {
            "--e2e" => e2e = true,
            "--bench" => {}
            "--metaproxy" => o.metaproxy = val()?.into(),
            "--haproxy" => o.haproxy = Some(val()?.into()),
            "--out" => o.out = val()?.into(),
            "--quick" => o.quick = true,
            "--duration" => o.duration = humantime::parse_duration(&val()?)?,
            "--rounds" => {
                o.rounds = val()?.parse()?;
                if o.rounds == 0 {
                    bail!("--rounds 0: expected at least 1");
                }
            }
            "--protocols" => o.protocols = val()?.split(',').map(str::to_owned).collect(),
            "--no-pin" => o.pin = false,
            "--idle-connections" => o.idle_connections = val()?.parse()?,
            "--perf" => o.perf = true,
            "--callgrind" => o.callgrind = true,
            "--serve" => o.serve = true,
            "--no-syscalls" => o.syscalls = false,
            "--only-multiplexing-cases" => o.only_multiplexing_cases = true,
            "--backends-sched" => match val()?.as_str() {
                "batch" => o.backends_batch = true,
                "normal" => o.backends_batch = false,
                other => bail!("--backends-sched {other:?}: expected batch or normal"),
            },
            "--payloads" => {
                o.payloads = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !e2e {
        return Ok(None);
    }
    if o.rounds == 0 {
        o.rounds = if o.quick { 1 } else { 3 };
    }
    if o.duration.is_zero() {
        o.duration = if o.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        };
    }
    Ok(Some(o))
}

fn main() -> Result<()> {
    let Some(opts) = parse_opts()? else {
        println!(
            "e2e: the end-to-end suite needs HAProxy and a release build; run scripts/bench-e2e.sh"
        );
        return Ok(());
    };
    run(opts)
}

/// A case of the matrix.
#[derive(Clone, Copy, Debug, Serialize)]
struct Case {
    connections: usize,
    pipeline: usize,
    payload: usize,
    /// Every request goes to backend v1 (a listener and a frontend without the split),
    /// so the upstream connection count of one backend is visible.
    single_backend: bool,
}

impl Case {
    fn new(connections: usize, pipeline: usize, payload: usize) -> Self {
        Case {
            connections,
            pipeline,
            payload,
            single_backend: false,
        }
    }

    fn label(&self) -> String {
        let p = if self.payload >= 1024 {
            format!("{}K", self.payload / 1024)
        } else {
            format!("{}B", self.payload)
        };
        let to = if self.single_backend { " →v1" } else { "" };
        format!("{}c×{} {p}{to}", self.connections, self.pipeline)
    }
}

/// The two multiplexing cases: one client connection with 64 requests in flight (a
/// Dubbo consumer's default shape), and 256 client connections with 4 in flight each,
/// all toward one backend (where an L7 proxy needs far fewer upstream connections and
/// writes than an L4 one). They run first for each payload, before the 256 × 16 cases
/// have grown metaproxy's upstream pools.
fn multiplexing_cases(payload: usize) -> [Case; 2] {
    [
        Case::new(1, 64, payload),
        Case {
            single_backend: true,
            ..Case::new(256, 4, payload)
        },
    ]
}

fn matrix(quick: bool, only_multiplexing: bool, payloads: &[usize]) -> Vec<Case> {
    let default: &[usize] = if quick { &[128] } else { &[128, 4096] };
    let payloads = if payloads.is_empty() {
        default
    } else {
        payloads
    };
    let mut v = Vec::new();
    for &payload in payloads {
        v.extend(multiplexing_cases(payload));
        if only_multiplexing {
            continue;
        }
        for connections in [1, 16, 256] {
            for pipeline in [1, 16] {
                v.push(Case::new(connections, pipeline, payload));
            }
        }
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Target {
    Direct,
    Metaproxy,
    Haproxy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Metaproxy => "metaproxy",
            Target::Haproxy => "haproxy",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
struct Run {
    target: Target,
    /// Requests per second: the median round's.
    rps: f64,
    /// Each round's requests per second, in the order they ran.
    rps_rounds: Vec<f64>,
    ok: u64,
    errors: u64,
    errors_by_kind: serde_json::Value,
    p50_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    max_us: f64,
    /// Proxy CPU seconds (user + system) per correct request.
    cpu_us_per_req: Option<f64>,
    /// Highest proxy RSS sampled during the run, KiB.
    rss_kib: Option<u64>,
    /// Connections the backends accepted during the run.
    upstream_connections_opened: u64,
    /// Highest number of connections open at the backends, sampled every 100 ms.
    upstream_connections_peak: u64,
    /// The proxy's write syscalls (write, writev, sendto, sendmsg) per correct request.
    writes_per_req: Option<f64>,
    /// The proxy's read syscalls (read, readv, recvfrom, recvmsg) per correct request.
    reads_per_req: Option<f64>,
}

/// One run of one target, as measured: the load generator's output and the proxy's
/// totals over the run.
struct Round {
    out: BenchOut,
    /// Proxy CPU seconds, user + system.
    cpu_s: Option<f64>,
    /// Proxy write and read syscalls.
    syscalls: Option<(u64, u64)>,
    rss_kib: Option<u64>,
    upstream_connections_opened: u64,
    upstream_connections_peak: u64,
}

impl Run {
    /// One target's rounds of one case as one result. Throughput and latency are the
    /// median round's (by throughput: the middle one of an odd count, the lower middle
    /// of an even one), so that one disturbed round does not decide a case; counts are
    /// summed over the rounds and per-request figures divided by every round's correct
    /// requests; peaks are the highest of any round.
    fn from_rounds(target: Target, rounds: Vec<Round>) -> Option<Run> {
        if rounds.is_empty() {
            return None;
        }
        let ok: u64 = rounds.iter().map(|r| r.out.ok).sum();
        let per_req = |total: Option<f64>| total.filter(|_| ok > 0).map(|t| t / ok as f64);
        let cpu = per_req(rounds.iter().map(|r| r.cpu_s).sum::<Option<f64>>()).map(|s| s * 1e6);
        let syscalls = rounds
            .iter()
            .map(|r| r.syscalls)
            .try_fold((0, 0), |(w, r), c| c.map(|(cw, cr)| (w + cw, r + cr)));
        let mut errors_by_kind = serde_json::Map::new();
        for r in &rounds {
            add_counts(&mut errors_by_kind, &r.out.errors_by_kind);
        }
        let mut by_rps: Vec<&BenchOut> = rounds.iter().map(|r| &r.out).collect();
        by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let median = by_rps[(by_rps.len() - 1) / 2];
        Some(Run {
            target,
            rps: median.rps,
            rps_rounds: rounds.iter().map(|r| r.out.rps).collect(),
            ok,
            errors: rounds.iter().map(|r| r.out.errors).sum(),
            errors_by_kind: errors_by_kind.into(),
            p50_us: median.p50,
            p99_us: median.p99,
            p99_9_us: median.p99_9,
            max_us: median.max,
            cpu_us_per_req: cpu,
            rss_kib: rounds.iter().filter_map(|r| r.rss_kib).max(),
            upstream_connections_opened: rounds.iter().map(|r| r.upstream_connections_opened).sum(),
            upstream_connections_peak: rounds
                .iter()
                .map(|r| r.upstream_connections_peak)
                .max()
                .unwrap_or(0),
            writes_per_req: per_req(syscalls.map(|(w, _)| w as f64)),
            reads_per_req: per_req(syscalls.map(|(_, r)| r as f64)),
        })
    }
}

/// Adds the `{kind: count}` object `counts` (the load generator's `errors_by_kind`) into
/// `sum`, key by key.
fn add_counts(sum: &mut serde_json::Map<String, serde_json::Value>, counts: &serde_json::Value) {
    for (kind, n) in counts.as_object().into_iter().flatten() {
        let total = sum
            .get(kind)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            + n.as_u64().unwrap_or(0);
        sum.insert(kind.clone(), total.into());
    }
}

#[derive(Debug, Serialize)]
struct CaseResult {
    protocol: String,
    case: Case,
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct Memory {
    proxy: &'static str,
    idle_rss_kib: u64,
    connections: usize,
    connections_accepted: usize,
    loaded_rss_kib: u64,
    per_connection_bytes: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: BTreeMap<&'static str, String>,
    duration_s: f64,
    /// Runs of each target per case (the median one is reported).
    rounds: usize,
    pinning: String,
    memory: Vec<Memory>,
    cases: Vec<CaseResult>,
    profile: Option<String>,
    /// How syscalls were counted, when they were.
    syscall_method: Option<String>,
    /// Each proxy's RSS (KiB) 2 s after the last case, every client connection closed.
    rss_after_load_kib: BTreeMap<&'static str, u64>,
}

/// Kills the child when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("e2e: stopped {}", self.name);
    }
}

/// A port to listen on that no outgoing connection can be using: below the kernel's
/// ephemeral range. A port the kernel hands out for `:0` may meanwhile become the local
/// port of one of the idle-memory step's 10,000 client connections (or the proxy's to
/// the backends), and a proxy started later then fails to bind it (HAProxy did, once).
fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = 10_000u32;
    if ephemeral_from > low + 1000 {
        let span = ephemeral_from - low;
        let start = std::process::id() % span;
        for _ in 0..1000 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = u16::try_from(low + (start + n * 7) % span)?;
            if StdListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `taskset -c CPU prog args...` when pinning, else `prog args...`.
fn pinned(pin: Option<&str>, prog: &Path) -> Command {
    match pin {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

fn cmd_output(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|| "unavailable".into())
}

fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("nproc", cmd_output("nproc", &[]));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    m.insert("cpu", cpu);
    m.insert("kernel", cmd_output("uname", &["-sr"]));
    m.insert("rustc", cmd_output("rustc", &["--version"]));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    m.insert("memory", mem);
    if let Some(us) = loopback_write_read_us() {
        m.insert(
            "loopback write + read",
            format!("{us:.2} µs per 64 B pair, one thread (median of 5 × 20,000)"),
        );
    }
    m
}

/// What this machine charges for a system call pair on loopback TCP: one thread writes
/// 64 bytes into a connected socket and reads them from its peer, 20,000 times, five
/// times over; returns the median batch's microseconds per pair. Machines differ most in
/// this (a proxy's cost at high pipelining is mostly such calls), so the report records
/// it and runs from different machines can be told apart.
fn loopback_write_read_us() -> Option<f64> {
    use std::io::{Read, Write};
    const PAIRS: u32 = 20_000;
    let listener = StdListener::bind("127.0.0.1:0").ok()?;
    let mut writer = std::net::TcpStream::connect(listener.local_addr().ok()?).ok()?;
    let (mut reader, _) = listener.accept().ok()?;
    writer.set_nodelay(true).ok()?;
    let out = [7u8; 64];
    let mut into = [0u8; 64];
    let mut batches = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..PAIRS {
            writer.write_all(&out).ok()?;
            reader.read_exact(&mut into).ok()?;
        }
        batches.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(PAIRS));
    }
    batches.sort_by(f64::total_cmp);
    batches.get(2).copied()
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32, tick: f64) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is index 0, so utime (14th) is 11, stime 12.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tick)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn clock_tick() -> f64 {
    cmd_output("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0)
}

fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {within:?}")
}

/// Per protocol: backend v1, backend v2, metaproxy listener, haproxy listener, and the
/// metaproxy listener and haproxy frontend that send everything to v1.
type Addrs = [SocketAddr; 6];

struct Env {
    addrs: BTreeMap<String, Addrs>,
    /// Per protocol: the stats of backends v1 and v2.
    stats: BTreeMap<String, [Arc<BackendStats>; 2]>,
    _backends: Vec<Backend>,
}

impl Env {
    /// (direct, metaproxy, haproxy) addresses for `case` of `protocol`.
    fn targets(&self, protocol: &str, case: &Case) -> Option<[SocketAddr; 3]> {
        let a = self.addrs.get(protocol)?;
        Some(if case.single_backend {
            [a[0], a[4], a[5]]
        } else {
            [a[0], a[2], a[3]]
        })
    }

    /// (connections accepted, connections open) summed over `protocol`'s backends.
    fn upstream_connections(&self, protocol: &str) -> (u64, u64) {
        self.stats.get(protocol).map_or((0, 0), |s| {
            s.iter().fold((0, 0), |(a, o), s| {
                (a + s.connections(), o + s.open_connections())
            })
        })
    }
}

fn metaproxy_config(addrs: &BTreeMap<String, Addrs>) -> String {
    let mut listeners = String::new();
    let mut routes = String::new();
    let mut clusters = String::new();
    for (p, a) in addrs {
        let matcher = match p.as_str() {
            "dubbo" => "            - key: interface\n              exact: org.apache.dubbo.bench.EchoService\n",
            _ => "            - key: method\n              exact: echo\n",
        };
        let options = if p == "thrift" {
            "    options: {transport: framed, protocol: binary}\n"
        } else {
            ""
        };
        let _ = write!(
            listeners,
            "  - name: {p}-in\n    address: {}\n    codec: {p}\n{options}    route_config: {p}-routes\n    max_connections: 30000\n",
            a[2]
        );
        let _ = write!(
            listeners,
            "  - name: {p}-single\n    address: {}\n    codec: {p}\n{options}    route_config: {p}-single-routes\n    max_connections: 30000\n",
            a[4]
        );
        let _ = write!(
            routes,
            "  - name: {p}-routes\n    routes:\n      - name: canary\n        match:\n          metadata:\n{matcher}        route:\n          weighted_clusters:\n            - {{cluster: {p}-v1, weight: 90}}\n            - {{cluster: {p}-v2, weight: 10}}\n      - name: rest\n        route:\n          cluster: {p}-v1\n"
        );
        // The same metadata match, everything to v1 (the multiplexing case).
        let _ = write!(
            routes,
            "  - name: {p}-single-routes\n    routes:\n      - name: v1\n        match:\n          metadata:\n{matcher}        route:\n          cluster: {p}-v1\n      - name: rest\n        route:\n          cluster: {p}-v1\n"
        );
        for (i, v) in ["v1", "v2"].iter().enumerate() {
            let _ = write!(
                clusters,
                "  - name: {p}-{v}\n    endpoints: [\"{}\"]\n    max_pending_requests: 100000\n",
                a[i]
            );
        }
    }
    format!("listeners:\n{listeners}route_configs:\n{routes}clusters:\n{clusters}")
}

fn haproxy_config(addrs: &BTreeMap<String, Addrs>) -> String {
    let mut s = String::from(
        "global\n    nbthread 1\n    maxconn 9000\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 300s\n    timeout server 300s\n\n",
    );
    for (p, a) in addrs {
        let _ = write!(
            s,
            "frontend {p}_in\n    bind {}\n    default_backend {p}_servers\n\nbackend {p}_servers\n    balance roundrobin\n    server v1 {} weight 9\n    server v2 {} weight 1\n\n",
            a[3], a[0], a[1]
        );
        let _ = write!(
            s,
            "frontend {p}_single\n    bind {}\n    default_backend {p}_v1\n\nbackend {p}_v1\n    server v1 {}\n\n",
            a[5], a[0]
        );
    }
    s
}

fn start_env(protocols: &[String], rt: &tokio::runtime::Runtime) -> Result<Env> {
    let mut addrs = BTreeMap::new();
    let mut stats = BTreeMap::new();
    let mut backends = Vec::new();
    for p in protocols {
        let (factory, v1, v2) = match p.as_str() {
            "dubbo" => (
                backend::dubbo_factory(),
                backend::dubbo_echo("v1"),
                backend::dubbo_echo("v2"),
            ),
            "thrift" => (
                backend::thrift_factory(),
                backend::thrift_echo(),
                backend::thrift_echo(),
            ),
            other => bail!("unknown protocol {other}"),
        };
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let b1 = rt.block_on(backend::spawn(any, factory.clone(), Default::default(), v1))?;
        let b2 = rt.block_on(backend::spawn(any, factory, Default::default(), v2))?;
        let port =
            || -> Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
        let (mp, ha, mp_single, ha_single) = (port()?, port()?, port()?, port()?);
        addrs.insert(
            p.clone(),
            [b1.addr(), b2.addr(), mp, ha, mp_single, ha_single],
        );
        stats.insert(p.clone(), [b1.stats().clone(), b2.stats().clone()]);
        backends.push(b1);
        backends.push(b2);
    }
    Ok(Env {
        addrs,
        stats,
        _backends: backends,
    })
}

struct BenchOut {
    rps: f64,
    ok: u64,
    errors: u64,
    errors_by_kind: serde_json::Value,
    p50: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

fn run_loadgen(
    opts: &Opts,
    cpu: Option<&str>,
    protocol: &str,
    target: SocketAddr,
    case: &Case,
    duration: Duration,
) -> Result<BenchOut> {
    let mut c = pinned(cpu, &opts.metaproxy);
    c.args(["bench", "--protocol", protocol, "--target"])
        .arg(target.to_string())
        .arg("--connections")
        .arg(case.connections.to_string())
        .arg("--pipeline")
        .arg(case.pipeline.to_string())
        .arg("--payload")
        .arg(case.payload.to_string())
        .arg("--duration")
        .arg(format!("{}ms", duration.as_millis()))
        .args(["--header", "user=bench", "--timeout", "5s", "--json"]);
    let out = c.output().context("running metaproxy bench")?;
    if !out.status.success() {
        bail!(
            "metaproxy bench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bench output {:?}", String::from_utf8_lossy(&out.stdout)))?;
    let f = |k: &str| v["latency_us"][k].as_f64().unwrap_or(f64::NAN);
    Ok(BenchOut {
        rps: v["requests_per_sec"].as_f64().unwrap_or(0.0),
        ok: v["ok"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        errors_by_kind: v["errors_by_kind"].clone(),
        p50: f("p50"),
        p99: f("p99"),
        p99_9: f("p99_9"),
        max: f("max"),
    })
}

/// Highest values seen by a [`Sampler`].
#[derive(Clone, Copy, Default)]
struct Peaks {
    rss_kib: u64,
    open_upstream: u64,
}

/// Samples the proxy's RSS (when it has a pid) and the connections open at the backends
/// every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peaks>,
}

impl Sampler {
    fn start(pid: Option<u32>, backends: Vec<Arc<BackendStats>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = Peaks::default();
            let sample = |peaks: &mut Peaks| {
                if let Some(pid) = pid {
                    peaks.rss_kib = peaks.rss_kib.max(rss_kib(pid).unwrap_or(0));
                }
                let open = backends.iter().map(|b| b.open_connections()).sum();
                peaks.open_upstream = peaks.open_upstream.max(open);
            };
            while !s.load(Ordering::Relaxed) {
                sample(&mut peaks);
                std::thread::sleep(Duration::from_millis(100));
            }
            sample(&mut peaks);
            peaks
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The syscalls counted per run.
const WRITE_SYSCALLS: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];
const READ_SYSCALLS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];

/// How a proxy's read and write syscalls are counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyscallMethod {
    /// `perf stat` on the `syscalls:sys_enter_*` tracepoints: every variant.
    Perf,
    /// `/proc/PID/io` `syscr`/`syscw`: only read/readv and write/writev, not the
    /// socket calls (HAProxy's send/recv are missed).
    ProcIo,
}

impl SyscallMethod {
    fn detect() -> SyscallMethod {
        let events: Vec<String> = WRITE_SYSCALLS
            .iter()
            .map(|n| format!("syscalls:sys_enter_{n}"))
            .collect();
        let ok = Command::new("perf")
            .args(["stat", "-x", ",", "-e", &events.join(","), "true"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("not supported")
            });
        if ok {
            SyscallMethod::Perf
        } else {
            SyscallMethod::ProcIo
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SyscallMethod::Perf => "`perf stat -e syscalls:sys_enter_{write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg} -p PID` on the proxy during each run (tracepoint counts, no sampling)",
            SyscallMethod::ProcIo => "`/proc/PID/io` syscw/syscr deltas: write/writev and read/readv only, not send/recv, so HAProxy's socket calls are not counted",
        }
    }
}

/// Counts one process's read and write syscalls between `start` and `finish`.
enum SyscallCount {
    Perf(Child),
    ProcIo { pid: u32, before: (u64, u64) },
}

fn proc_io(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some((field("syscw:")?, field("syscr:")?))
}

impl SyscallCount {
    fn start(method: SyscallMethod, pid: u32) -> Option<SyscallCount> {
        match method {
            SyscallMethod::Perf => {
                let events: Vec<String> = WRITE_SYSCALLS
                    .iter()
                    .chain(READ_SYSCALLS.iter())
                    .map(|n| format!("syscalls:sys_enter_{n}"))
                    .collect();
                let child = Command::new("perf")
                    .args(["stat", "-x", ",", "-e", &events.join(","), "-p"])
                    .arg(pid.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .ok()?;
                // perf attaches asynchronously; give it a moment.
                std::thread::sleep(Duration::from_millis(150));
                Some(SyscallCount::Perf(child))
            }
            SyscallMethod::ProcIo => Some(SyscallCount::ProcIo {
                pid,
                before: proc_io(pid)?,
            }),
        }
    }

    /// (writes, reads) since `start`.
    fn finish(self) -> Option<(u64, u64)> {
        match self {
            SyscallCount::Perf(child) => {
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
                let out = child.wait_with_output().ok()?;
                let text = String::from_utf8_lossy(&out.stderr);
                let (mut writes, mut reads) = (0, 0);
                for line in text.lines() {
                    let f: Vec<&str> = line.split(',').collect();
                    let (Some(count), Some(event)) = (f.first(), f.get(2)) else {
                        continue;
                    };
                    let Ok(count) = count.trim().parse::<u64>() else {
                        continue;
                    };
                    let name = event.trim().trim_start_matches("syscalls:sys_enter_");
                    if WRITE_SYSCALLS.contains(&name) {
                        writes += count;
                    } else if READ_SYSCALLS.contains(&name) {
                        reads += count;
                    }
                }
                Some((writes, reads))
            }
            SyscallCount::ProcIo { pid, before } => {
                let after = proc_io(pid)?;
                Some((after.0 - before.0, after.1 - before.1))
            }
        }
    }
}

fn measure_idle(
    name: &'static str,
    pid: u32,
    addr: SocketAddr,
    n: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<Memory> {
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid).context("proxy RSS")?;
    let conns = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => v.push(s),
                Err(e) => {
                    eprintln!("e2e: idle connection {} failed: {e}", v.len());
                    break;
                }
            }
        }
        v
    });
    // Let the proxy accept and set up every connection.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_kib(pid).context("proxy RSS")?;
    let k = conns.len();
    rt.block_on(async { drop(conns) });
    std::thread::sleep(Duration::from_secs(1));
    Ok(Memory {
        proxy: name,
        idle_rss_kib: idle,
        connections: n,
        connections_accepted: k,
        loaded_rss_kib: loaded,
        per_connection_bytes: if k == 0 {
            f64::NAN
        } else {
            (loaded as f64 - idle as f64) * 1024.0 / k as f64
        },
    })
}

/// Puts every thread of this process but the main one (the echo backends' runtime and
/// the threads it starts later, which inherit the policy) under SCHED_BATCH. The main
/// thread, which starts the proxies and the load generator, keeps the default policy,
/// so they do not inherit it.
fn backends_under_sched_batch() -> Result<()> {
    let main = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        if tid == main {
            continue;
        }
        let ok = Command::new("chrt")
            .args(["-b", "-p", "0", &tid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "--backends-sched batch: chrt -b -p 0 {tid} failed (util-linux's chrt is needed)"
            );
        }
    }
    Ok(())
}

fn run(opts: Opts) -> Result<()> {
    std::fs::create_dir_all(&opts.out)?;
    let pin = opts.pin && has_taskset();
    let (lg_cpu, proxy_cpu) = if pin {
        (Some("0"), Some("1"))
    } else {
        (None, None)
    };
    let mut pinning = if pin {
        "taskset: load generator on CPU 0; echo backends, metaproxy and HAProxy on CPU 1 (the proxy shares its core with the backends in (b) and (c); in (a) the backends have CPU 1 alone)".to_owned()
    } else {
        "none (taskset unavailable or --no-pin): every process floats over all cores".to_owned()
    };
    if opts.backends_batch {
        pinning.push_str("; echo backends under SCHED_BATCH, the proxies and the load generator not (--backends-sched batch: a backend woken by the proxy does not preempt it)");
    }
    eprintln!("e2e: pinning: {pinning}");
    // Before this process pins itself (nproc follows the affinity mask).
    let machine_info = machine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let env = start_env(&opts.protocols, &rt)?;
    if let Some(cpu) = proxy_cpu {
        // Pin this process (the echo backends) to the proxy's core.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    if opts.backends_batch {
        backends_under_sched_batch()?;
    }
    let tick = clock_tick();
    let cfg_path = opts.out.join("metaproxy.yaml");
    std::fs::write(&cfg_path, metaproxy_config(&env.addrs))?;
    let start_mp = |log: &str| -> Result<Proc> {
        let log = std::fs::File::create(opts.out.join(log))?;
        let mut c = pinned(proxy_cpu, &opts.metaproxy);
        c.arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        let p = Proc {
            name: "metaproxy",
            child: c.spawn().context("starting metaproxy run")?,
        };
        for a in env.addrs.values() {
            wait_listening(a[2], Duration::from_secs(10))?;
        }
        Ok(p)
    };
    let ha_cfg = opts.out.join("haproxy.cfg");
    std::fs::write(&ha_cfg, haproxy_config(&env.addrs))?;
    let start_ha = |path: &Path, log: &str| -> Result<Proc> {
        let log = std::fs::File::create(opts.out.join(log))?;
        let mut c = pinned(proxy_cpu, path);
        c.arg("-db")
            .arg("-f")
            .arg(&ha_cfg)
            .stdout(Stdio::null())
            .stderr(log);
        let p = Proc {
            name: "haproxy",
            child: c.spawn().context("starting haproxy")?,
        };
        for a in env.addrs.values() {
            wait_listening(a[3], Duration::from_secs(10))?;
        }
        Ok(p)
    };
    let mut memory = vec![];
    let first = *env.addrs.values().next().context("no protocol")?;
    if opts.serve {
        // Only start everything, print where it listens and wait for stdin to close
        // (for profiling or tracing by hand).
        let mp = start_mp("metaproxy.log")?;
        let ha = match &opts.haproxy {
            Some(path) => Some(start_ha(path, "haproxy.log")?),
            None => None,
        };
        for (p, a) in &env.addrs {
            println!(
                "{p}: backend v1 {} v2 {} metaproxy {} (pid {}) haproxy {} (pid {})",
                a[0],
                a[1],
                a[2],
                mp.pid(),
                a[3],
                ha.as_ref()
                    .map(|h| h.pid().to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        return Ok(());
    }
    {
        // Memory is measured on a fresh process, which is then replaced by another
        // fresh one for the load runs (allocators keep freed memory).
        let mp = start_mp("metaproxy-idle.log")?;
        eprintln!(
            "e2e: metaproxy idle memory with {} connections",
            opts.idle_connections
        );
        memory.push(measure_idle(
            "metaproxy",
            mp.pid(),
            first[2],
            opts.idle_connections,
            &rt,
        )?);
    }
    if let Some(path) = &opts.haproxy {
        let ha = start_ha(path, "haproxy-idle.log")?;
        // HAProxy opens one server connection per client connection, so fewer
        // idle connections keep both ends within the file descriptor limit.
        let n = (opts.idle_connections / 4).max(1);
        eprintln!("e2e: haproxy idle memory with {n} connections");
        memory.push(measure_idle("haproxy", ha.pid(), first[3], n, &rt)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mp = start_mp("metaproxy.log")?;
    let ha = match &opts.haproxy {
        Some(path) => Some(start_ha(path, "haproxy.log")?),
        None => None,
    };

    let cases = matrix(opts.quick, opts.only_multiplexing_cases, &opts.payloads);
    let syscall_method = opts.syscalls.then(SyscallMethod::detect);
    let mut results = Vec::new();
    let total = cases.len() * env.addrs.len();
    let mut k = 0;
    for protocol in env.addrs.keys() {
        let mut targets = vec![(Target::Direct, None), (Target::Metaproxy, Some(mp.pid()))];
        if let Some(h) = &ha {
            targets.push((Target::Haproxy, Some(h.pid())));
        }
        let backend_stats: Vec<Arc<BackendStats>> = env
            .stats
            .get(protocol)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        // Warm up every path (upstream connections, page cache of the binaries).
        let warm = Case::new(16, 4, 128);
        let warm_addrs = env.targets(protocol, &warm).context("protocol")?;
        for (i, _) in targets.iter().enumerate() {
            let addr = &warm_addrs[i];
            let _ = run_loadgen(
                &opts,
                lg_cpu,
                protocol,
                *addr,
                &warm,
                Duration::from_millis(500),
            )?;
        }
        for case in &cases {
            k += 1;
            let addrs = env.targets(protocol, case).context("protocol")?;
            let mut rounds: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
            for round in 1..=opts.rounds {
                for (i, (target, pid)) in targets.iter().enumerate() {
                    let addr = &addrs[i];
                    let syscalls = pid
                        .zip(syscall_method)
                        .and_then(|(p, m)| SyscallCount::start(m, p));
                    let (accepted0, _) = env.upstream_connections(protocol);
                    let cpu0 = pid.and_then(|p| cpu_seconds(p, tick));
                    let sampler = Sampler::start(*pid, backend_stats.clone());
                    let out = run_loadgen(&opts, lg_cpu, protocol, *addr, case, opts.duration)?;
                    let cpu1 = pid.and_then(|p| cpu_seconds(p, tick));
                    let peaks = sampler.finish();
                    let (accepted1, _) = env.upstream_connections(protocol);
                    let syscalls = syscalls.and_then(SyscallCount::finish);
                    let writes_per_req = syscalls
                        .filter(|_| out.ok > 0)
                        .map(|(w, _)| w as f64 / out.ok as f64);
                    eprintln!(
                        "e2e: [{k}/{total}] round {round}/{} {protocol} {} {}: {:.0} req/s p99 {:.0}us errors {} upstream conns opened {} peak {} writes/req {}",
                        opts.rounds,
                        case.label(),
                        target.name(),
                        out.rps,
                        out.p99,
                        out.errors,
                        accepted1 - accepted0,
                        peaks.open_upstream,
                        opt(writes_per_req, 3)
                    );
                    rounds[i].push(Round {
                        out,
                        cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
                        syscalls,
                        rss_kib: pid.map(|_| peaks.rss_kib),
                        upstream_connections_opened: accepted1 - accepted0,
                        upstream_connections_peak: peaks.open_upstream,
                    });
                }
            }
            let runs = targets
                .iter()
                .zip(rounds)
                .filter_map(|((target, _), r)| Run::from_rounds(*target, r))
                .collect();
            results.push(CaseResult {
                protocol: protocol.clone(),
                case: *case,
                runs,
            });
        }
    }

    // Memory once the load is over: client connections are closed, metaproxy's
    // upstream pools stay open (idle), as they would between bursts.
    std::thread::sleep(Duration::from_secs(2));
    let mut rss_after_load_kib = BTreeMap::new();
    if let Some(k) = rss_kib(mp.pid()) {
        rss_after_load_kib.insert("metaproxy", k);
    }
    if let Some(k) = ha.as_ref().and_then(|h| rss_kib(h.pid())) {
        rss_after_load_kib.insert("haproxy", k);
    }

    let p = env.addrs.keys().next().cloned().unwrap_or_default();
    let profile = if opts.perf {
        let mut v = Vec::new();
        for payload in [128, 4096] {
            if let Some(t) = profile_metaproxy(&opts, lg_cpu, &p, first[2], mp.pid(), payload)? {
                v.push(t);
            }
        }
        Some(v.join("\n\n"))
    } else if opts.callgrind {
        drop(mp);
        let mut v = Vec::new();
        for (pipeline, payload) in CALLGRIND_CASES {
            match callgrind_metaproxy(
                &opts, lg_cpu, proxy_cpu, &cfg_path, &p, first[2], pipeline, payload,
            ) {
                Ok(t) => v.push(t),
                Err(e) => v.push(format!(
                    "callgrind profile (pipeline {pipeline}, {payload} B) failed: {e:#}"
                )),
            }
        }
        Some(v.join("\n\n"))
    } else {
        None
    };

    let results = Results {
        machine: machine_info,
        duration_s: opts.duration.as_secs_f64(),
        rounds: opts.rounds,
        pinning,
        memory,
        cases: results,
        profile,
        syscall_method: syscall_method.map(|m| m.describe().to_owned()),
        rss_after_load_kib,
    };
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let haproxy_version = opts
        .haproxy
        .as_ref()
        .map(|p| cmd_output(&p.to_string_lossy(), &["-v"]))
        .unwrap_or_else(|| "not run".into());
    let md = render_markdown(&results, &opts, &haproxy_version);
    std::fs::write(opts.out.join("report.md"), &md)?;
    for p in &opts.protocols {
        charts(&results, p, &opts.out)?;
    }
    drop(ha);
    println!("{md}");
    eprintln!(
        "e2e: report written to {}",
        opts.out.join("report.md").display()
    );
    Ok(())
}

/// `perf record` on metaproxy during a representative load; the top symbols.
fn profile_metaproxy(
    opts: &Opts,
    lg_cpu: Option<&str>,
    protocol: &str,
    addr: SocketAddr,
    pid: u32,
    payload: usize,
) -> Result<Option<String>> {
    let data = opts.out.join(format!("perf-{payload}.data"));
    let secs = opts.duration.as_secs().max(2);
    let mut rec = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf record")?;
    std::thread::sleep(Duration::from_millis(300));
    let case = Case::new(16, 16, payload);
    let _ = run_loadgen(
        opts,
        lg_cpu,
        protocol,
        addr,
        &case,
        Duration::from_secs(secs),
    )?;
    let _ = rec.wait();
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "symbol",
            "-g",
            "none",
            "--percent-limit",
            "1",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("perf report")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let top: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(30)
        .collect();
    std::fs::write(
        opts.out.join(format!("perf-{payload}-top.txt")),
        text.as_bytes(),
    )?;
    Ok(Some(format!(
        "perf record -F 999 -g on metaproxy, {protocol} 16 connections × pipeline 16, {payload} B, {secs} s (self time, symbols ≥ 1%):\n\n{}",
        top.join("\n")
    )))
}

/// (pipeline, payload) of the callgrind profiles, each over 16 client connections.
const CALLGRIND_CASES: [(usize, usize); 3] = [(1, 128), (16, 128), (16, 4096)];

/// Runs a separate metaproxy under `valgrind --tool=callgrind` for a short fixed load
/// and returns the top functions by self cost (instructions).
#[allow(clippy::too_many_arguments)]
fn callgrind_metaproxy(
    opts: &Opts,
    lg_cpu: Option<&str>,
    proxy_cpu: Option<&str>,
    cfg: &Path,
    protocol: &str,
    addr: SocketAddr,
    pipeline: usize,
    payload: usize,
) -> Result<String> {
    let name = format!("callgrind-p{pipeline}-{payload}");
    let outfile = opts.out.join(format!("{name}.out"));
    let _ = std::fs::remove_file(&outfile);
    let log = std::fs::File::create(opts.out.join(format!("{name}.log")))?;
    let mut c = pinned(proxy_cpu, Path::new("valgrind"));
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", outfile.display()))
        .arg(&opts.metaproxy)
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = c.spawn().context("starting valgrind")?;
    let pid = child.id();
    wait_listening(addr, Duration::from_secs(60))?;
    let requests = 20_000;
    let mut lg = pinned(lg_cpu, &opts.metaproxy);
    let out = lg
        .args(["bench", "--protocol", protocol, "--target"])
        .arg(addr.to_string())
        .args(["--connections", "16", "--pipeline"])
        .arg(pipeline.to_string())
        .arg("--payload")
        .arg(payload.to_string())
        .args([
            "--requests",
            &requests.to_string(),
            "--header",
            "user=bench",
            "--timeout",
            "30s",
            "--json",
        ])
        .output()
        .context("bench under callgrind")?;
    // SIGTERM lets metaproxy drain and exit normally so callgrind writes its profile.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("metaproxy under callgrind did not exit on SIGTERM");
    }
    let ann = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg(&outfile)
        .output()
        .context("callgrind_annotate")?;
    let text = String::from_utf8_lossy(&ann.stdout);
    std::fs::write(opts.out.join(format!("{name}-top.txt")), text.as_bytes())?;
    let mut lines = Vec::new();
    let mut total = String::new();
    let mut in_table = false;
    for l in text.lines() {
        if l.contains("PROGRAM TOTALS") {
            total = l.trim().to_owned();
        }
        if l.contains("file:function") {
            in_table = true;
            continue;
        }
        if in_table && !l.trim().is_empty() && !l.starts_with("--") {
            let short: String = l.trim().chars().take(160).collect();
            lines.push(short);
        }
        if lines.len() >= 25 {
            break;
        }
    }
    let bench: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let instructions: f64 = total
        .split_whitespace()
        .next()
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let per_request = bench["ok"]
        .as_f64()
        .filter(|ok| *ok > 0.0)
        .map_or(f64::NAN, |ok| instructions / ok);
    Ok(format!(
        "valgrind --tool=callgrind on metaproxy, {protocol} 16 connections × pipeline {pipeline}, {payload} B, {} requests answered ({} errors), {per_request:.0} instructions per request (start-up and shut-down included); instructions by function (self cost), top 25:\n\n{total}\n\n{}",
        bench["ok"], bench["errors"], lines.join("\n")
    ))
}

fn get(c: &CaseResult, t: Target) -> Option<&Run> {
    c.runs.iter().find(|r| r.target == t)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn geomean(v: &[f64]) -> f64 {
    let v: Vec<f64> = v
        .iter()
        .copied()
        .filter(|x| *x > 0.0 && x.is_finite())
        .collect();
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

fn render_markdown(r: &Results, opts: &Opts, haproxy_version: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# metaproxy end-to-end benchmark\n");
    let _ = writeln!(s, "## Machine\n");
    for (k, v) in &r.machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "- haproxy: {haproxy_version}");
    let _ = writeln!(s, "- pinning: {}", r.pinning);
    let _ = writeln!(
        s,
        "- load: `metaproxy bench` closed loop, {} s per run{}, {}\n",
        r.duration_s,
        if opts.quick { " (quick mode)" } else { "" },
        if r.rounds > 1 {
            format!(
                "{} rounds per case, the targets alternating within each (direct, metaproxy, haproxy, direct, ...); throughput and latency are each target's median round, CPU and syscalls per request are over all its rounds",
                r.rounds
            )
        } else {
            "targets run back to back per case (direct, metaproxy, haproxy)".to_owned()
        }
    );
    let _ = writeln!(s, "(a) direct = the echo backend; (b) metaproxy = `metaproxy run`, route with a metadata match and a weighted 90/10 split over two backends; (c) haproxy = HAProxy TCP mode, `nbthread 1`, the same two backends weighted 9/1 per connection. Cases marked →v1 send everything to backend v1 (metaproxy: a route with the same match and no split; HAProxy: a frontend with only v1).\n");
    if let Some(m) = &r.syscall_method {
        let _ = writeln!(s, "Syscalls counted with {m}.\n");
    }

    // Goals.
    let mut thr = Vec::new();
    let mut thr_met = 0;
    let mut lat_met = 0;
    let mut cpu_met = 0;
    let mut cpu_ratios = Vec::new();
    let mut lat_rows = 0;
    let mut n = 0;
    for c in &r.cases {
        let (Some(a), Some(b), Some(h)) = (
            get(c, Target::Direct),
            get(c, Target::Metaproxy),
            get(c, Target::Haproxy),
        ) else {
            continue;
        };
        n += 1;
        thr.push(b.rps / h.rps);
        if b.rps >= h.rps {
            thr_met += 1;
        }
        lat_rows += 1;
        if b.p99_us - a.p99_us <= h.p99_us - a.p99_us {
            lat_met += 1;
        }
        if let (Some(x), Some(y)) = (b.cpu_us_per_req, h.cpu_us_per_req) {
            cpu_ratios.push(x / y);
            if x <= y {
                cpu_met += 1;
            }
        }
    }
    let _ = writeln!(s, "## Goals (issues 7 and 11)\n");
    let _ = writeln!(s, "| goal | result | margin |\n|---|---|---|");
    if n > 0 {
        let g = geomean(&thr);
        let _ = writeln!(
            s,
            "| throughput ≥ HAProxy TCP | {} ({thr_met}/{n} cases) | metaproxy/HAProxy requests/s: geometric mean {:.2}, min {:.2}, max {:.2} |",
            if thr_met == n { "met" } else { "not met" },
            g,
            thr.iter().copied().fold(f64::INFINITY, f64::min),
            thr.iter().copied().fold(0.0, f64::max)
        );
        let _ = writeln!(
            s,
            "| p99 added latency ≤ HAProxy's | {} ({lat_met}/{lat_rows} cases) | see the added-p99 columns below |",
            if lat_met == lat_rows { "met" } else { "not met" }
        );
        let cg = geomean(&cpu_ratios);
        let _ = writeln!(
            s,
            "| CPU per request ≤ HAProxy's | {} ({cpu_met}/{} cases) | metaproxy/HAProxy CPU per request: geometric mean {:.2} |",
            if cpu_met == cpu_ratios.len() && !cpu_ratios.is_empty() { "met" } else { "not met" },
            cpu_ratios.len(),
            cg
        );
        let _ = writeln!(
            s,
            "| throughput ≥ 1.3× HAProxy TCP, geometric mean (issue 11) | {} | {:.2}× ({:+.2} vs the goal) |",
            if g >= 1.3 { "met" } else { "not met" },
            g,
            g - 1.3
        );
        let _ = writeln!(
            s,
            "| CPU per request ≤ 0.8× HAProxy's, geometric mean (issue 11) | {} | {:.2}× ({:+.2} vs the goal) |",
            if cg <= 0.8 { "met" } else { "not met" },
            cg,
            cg - 0.8
        );
    } else {
        let _ = writeln!(
            s,
            "| throughput, latency, CPU vs HAProxy | not measured (HAProxy not run) | |"
        );
    }
    if let Some(m) = r.memory.iter().find(|m| m.proxy == "metaproxy") {
        let idle_mib = m.idle_rss_kib as f64 / 1024.0;
        let _ = writeln!(
            s,
            "| RSS idle ≤ 10 MiB | {} | {:.2} MiB ({:+.2} MiB vs the goal) |",
            if idle_mib <= 10.0 { "met" } else { "not met" },
            idle_mib,
            idle_mib - 10.0
        );
        if let Some(k) = r.rss_after_load_kib.get("metaproxy") {
            let mib = *k as f64 / 1024.0;
            let _ = writeln!(
                s,
                "| RSS ≤ 12 MiB after the load, connections closed (issue 11) | {} | {:.2} MiB ({:+.2} MiB vs the goal) |",
                if mib <= 12.0 { "met" } else { "not met" },
                mib,
                mib - 12.0
            );
        }
        let kib = m.per_connection_bytes / 1024.0;
        let _ = writeln!(
            s,
            "| ≤ 8 KiB per idle connection | {} | {:.2} KiB per connection ({:+.2} KiB vs the goal; {} connections) |",
            if kib <= 8.0 { "met" } else { "not met" },
            kib,
            kib - 8.0,
            m.connections_accepted
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Memory\n");
    let _ = writeln!(s, "| proxy | RSS idle | idle connections | RSS with them | per connection |\n|---|---|---|---|---|");
    for m in &r.memory {
        let _ = writeln!(
            s,
            "| {} | {:.2} MiB | {} | {:.2} MiB | {:.2} KiB |",
            m.proxy,
            m.idle_rss_kib as f64 / 1024.0,
            m.connections_accepted,
            m.loaded_rss_kib as f64 / 1024.0,
            m.per_connection_bytes / 1024.0
        );
    }
    let _ = writeln!(s, "\nHAProxy in TCP mode opens one server connection per client connection, so its idle test uses a quarter of the connections to stay within the file-descriptor limit.\n");
    if !r.rss_after_load_kib.is_empty() {
        let after: Vec<String> = r
            .rss_after_load_kib
            .iter()
            .map(|(p, k)| format!("{p} {:.2} MiB", *k as f64 / 1024.0))
            .collect();
        let _ = writeln!(
            s,
            "RSS 2 s after the last case (client connections closed, upstream pools idle): {}.\n",
            after.join(", ")
        );
    }

    for p in &opts.protocols {
        let rows: Vec<&CaseResult> = r.cases.iter().filter(|c| &c.protocol == p).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "## {p}\n");
        let _ = writeln!(
            s,
            "![throughput]({p}-throughput.svg)\n![p99]({p}-p99.svg)\n"
        );
        let _ = writeln!(s, "Throughput (requests/s) and ratios:\n");
        let by_round = r.rounds > 1;
        let _ = writeln!(
            s,
            "| case | (a) direct | (b) metaproxy | (c) haproxy | b/a | b/c |{} errors a/b/c |\n|---|---|---|---|---|---|{}---|",
            if by_round { " b/c by round |" } else { "" },
            if by_round { "---|" } else { "" }
        );
        for c in &rows {
            let a = get(c, Target::Direct);
            let b = get(c, Target::Metaproxy);
            let h = get(c, Target::Haproxy);
            let rps = |x: Option<&Run>| opt(x.map(|r| r.rps), 0);
            let e = |x: Option<&Run>| {
                x.map(|r| r.errors.to_string())
                    .unwrap_or_else(|| "–".into())
            };
            let rounds = match (b, h) {
                (Some(b), Some(h)) if by_round => {
                    let v: Vec<String> = b
                        .rps_rounds
                        .iter()
                        .zip(&h.rps_rounds)
                        .map(|(x, y)| ratio(*x, *y))
                        .collect();
                    format!(" {} |", v.join(" "))
                }
                _ if by_round => " – |".to_owned(),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |{} {}/{}/{} |",
                c.case.label(),
                rps(a),
                rps(b),
                rps(h),
                ratio(b.map_or(f64::NAN, |r| r.rps), a.map_or(f64::NAN, |r| r.rps)),
                ratio(b.map_or(f64::NAN, |r| r.rps), h.map_or(f64::NAN, |r| r.rps)),
                rounds,
                e(a),
                e(b),
                e(h)
            );
        }
        let _ = writeln!(
            s,
            "\nLatency (µs) p50 / p99 / p99.9, and p99 added over direct:\n"
        );
        let _ = writeln!(s, "| case | (a) direct | (b) metaproxy | (c) haproxy | added p99 b | added p99 c |\n|---|---|---|---|---|---|");
        for c in &rows {
            let a = get(c, Target::Direct);
            let b = get(c, Target::Metaproxy);
            let h = get(c, Target::Haproxy);
            let l = |x: Option<&Run>| {
                x.map(|r| format!("{:.0} / {:.0} / {:.0}", r.p50_us, r.p99_us, r.p99_9_us))
                    .unwrap_or_else(|| "–".into())
            };
            let added = |x: Option<&Run>| opt(x.zip(a).map(|(x, a)| x.p99_us - a.p99_us), 0);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                c.case.label(),
                l(a),
                l(b),
                l(h),
                added(b),
                added(h)
            );
        }
        let _ = writeln!(
            s,
            "\nProxy CPU (user+system) per request and peak RSS during the run:\n"
        );
        let _ = writeln!(s, "| case | CPU µs/req metaproxy | CPU µs/req haproxy | b/c | RSS metaproxy | RSS haproxy |\n|---|---|---|---|---|---|");
        for c in &rows {
            let b = get(c, Target::Metaproxy);
            let h = get(c, Target::Haproxy);
            let cb = b.and_then(|r| r.cpu_us_per_req);
            let ch = h.and_then(|r| r.cpu_us_per_req);
            let rss = |x: Option<&Run>| {
                x.and_then(|r| r.rss_kib)
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                c.case.label(),
                opt(cb, 2),
                opt(ch, 2),
                ratio(cb.unwrap_or(f64::NAN), ch.unwrap_or(f64::NAN)),
                rss(b),
                rss(h)
            );
        }
        let _ = writeln!(
            s,
            "\nUpstream connections (accepted by the echo backends during the run, and the most open at once) and the proxy's syscalls per request:\n"
        );
        let _ = writeln!(s, "| case | opened a/b/c | peak open a/b/c | writes/req metaproxy | writes/req haproxy | reads/req metaproxy | reads/req haproxy |\n|---|---|---|---|---|---|---|");
        for c in &rows {
            let a = get(c, Target::Direct);
            let b = get(c, Target::Metaproxy);
            let h = get(c, Target::Haproxy);
            let n = |x: Option<&Run>, f: fn(&Run) -> u64| {
                x.map(|r| f(r).to_string()).unwrap_or_else(|| "–".into())
            };
            let opened = |x| n(x, |r| r.upstream_connections_opened);
            let peak = |x| n(x, |r| r.upstream_connections_peak);
            let _ = writeln!(
                s,
                "| {} | {}/{}/{} | {}/{}/{} | {} | {} | {} | {} |",
                c.case.label(),
                opened(a),
                opened(b),
                opened(h),
                peak(a),
                peak(b),
                peak(h),
                opt(b.and_then(|r| r.writes_per_req), 3),
                opt(h.and_then(|r| r.writes_per_req), 3),
                opt(b.and_then(|r| r.reads_per_req), 3),
                opt(h.and_then(|r| r.reads_per_req), 3),
            );
        }
        let _ = writeln!(s);
    }
    if let Some(p) = &r.profile {
        let _ = writeln!(s, "## Where metaproxy's time goes\n\n```text\n{p}\n```\n");
    }
    let _ = writeln!(s, "Raw figures: `results.json`. CPU time comes from `/proc/PID/stat` (utime+stime, clock ticks) before and after each run; RSS is the highest `VmRSS` sampled every 100 ms.");
    s
}

fn charts(r: &Results, protocol: &str, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let rows: Vec<&CaseResult> = r.cases.iter().filter(|c| c.protocol == protocol).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let labels: Vec<String> = rows.iter().map(|c| c.case.label()).collect();
    let targets = [
        (Target::Direct, RGBColor(120, 120, 120)),
        (Target::Metaproxy, RGBColor(31, 119, 180)),
        (Target::Haproxy, RGBColor(255, 127, 14)),
    ];
    for (file, title, ydesc, f) in [
        (
            "throughput",
            "throughput",
            "requests/s",
            (|r: &Run| r.rps) as fn(&Run) -> f64,
        ),
        ("p99", "p99 latency", "µs", |r: &Run| r.p99_us),
    ] {
        let path = out.join(format!("{protocol}-{file}.svg"));
        let root = SVGBackend::new(&path, (1200, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let ymax = rows
            .iter()
            .flat_map(|c| c.runs.iter().map(f))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let n = rows.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{protocol}: {title} per case (connections×pipeline payload)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)?;
        let labels_c = labels.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels_c.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(ydesc)
            .draw()?;
        for (k, (t, color)) in targets.iter().enumerate() {
            let bars: Vec<(usize, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, c)| get(c, *t).map(|r| (i, f(r))))
                .filter(|(_, v)| v.is_finite())
                .collect();
            if bars.is_empty() {
                continue;
            }
            let color = *color;
            chart
                .draw_series(bars.into_iter().map(move |(i, v)| {
                    let x0 = i as f64 - 0.4 + k as f64 * 0.27;
                    Rectangle::new([(x0, 0.0), (x0 + 0.25, v)], color.filled())
                }))?
                .label(t.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
    }
    Ok(())
}
