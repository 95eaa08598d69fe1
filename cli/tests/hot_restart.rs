//! Hot restart through the real binary: `metaproxy run --takeover` under continuous
//! Dubbo and Thrift load, three times in a row, with the same listening sockets, no
//! refused connection and no failed or lost request; new routes after a takeover; and
//! takeovers that must leave the running process untouched (invalid config, a binary
//! that dies mid-handover, a concurrent takeover, a protocol version mismatch).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meta_protocol::Codec;
use metaproxy_cli::backend;
use metaproxy_dubbo::frames::{parse_response, Args, RequestFrame};
use metaproxy_thrift::frames::{write_call, FrameSpec, Reply};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport};

use common::binary::{bin, spawn_logged};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after `drain_timeout` an old process may take to exit.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Processes

/// A proxy process and its log lines; killed on drop.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    listeners: HashMap<String, SocketAddr>,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "pid {}: no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.pid(),
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Collects the lines logged so far.
    fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Waits for the exit, at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }
}

/// Spawns `metaproxy run` (with `--takeover` when asked) without waiting for anything.
fn spawn(config: &Path, takeover: bool, env: &[(&str, &str)]) -> (Child, Receiver<String>) {
    let mut cmd = bin();
    cmd.args(["run", "--config"]).arg(config);
    if takeover {
        cmd.arg("--takeover");
    }
    spawn_logged(cmd, env)
}

/// Starts a proxy and waits until every listener and the admin server are bound.
fn start(config: &Path, takeover: bool, env: &[(&str, &str)]) -> Proc {
    let (child, lines) = spawn(config, takeover, env);
    let mut p = Proc {
        child,
        lines,
        log: Vec::new(),
        listeners: HashMap::new(),
        admin: "0.0.0.0:0".parse().unwrap(),
    };
    loop {
        let line = p.wait_for("listening on ", Duration::from_secs(20));
        let addr: SocketAddr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        if line.contains("admin listening on") {
            p.admin = addr;
            return p;
        }
        let name = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listener="))
            .unwrap()
            .to_owned();
        p.listeners.insert(name, addr);
    }
}

/// Starts `metaproxy run --takeover` and waits until it has taken over.
fn take_over(config: &Path, env: &[(&str, &str)]) -> (Proc, Duration) {
    let began = Instant::now();
    let mut p = start(config, true, env);
    p.wait_for("took over from pid", Duration::from_secs(20));
    (p, began.elapsed())
}

// ---------------------------------------------------------------------------
// Sockets as the kernel sees them

/// Inodes of the sockets listening on `port` (loopback, IPv4).
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            (local_port == port && f[3] == "0A").then(|| f[9].parse().ok())?
        })
        .collect()
}

/// Inodes of every socket process `pid` holds.
fn socket_inodes_of(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `GET path` on the admin server: (status, body).
fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn epoch(admin: SocketAddr) -> i64 {
    let (_, body) = admin_get(admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("metaproxy_hot_restart_epoch "))
        .unwrap_or_else(|| panic!("no epoch in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Clients

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    told_to_move: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }

    fn refuse(&self, what: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Dubbo,
    Thrift,
}

/// One client connection speaking `proto`.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    thrift: ThriftCodec,
    transport: Transport,
    proto: Proto,
}

/// What a Dubbo reply carried besides its echo.
struct Answer {
    backend: Option<String>,
    told_to_move: bool,
    /// The Thrift header transport's `metaproxy-drain` header.
    drain_header: Option<String>,
}

impl Conn {
    fn connect(addr: SocketAddr, proto: Proto) -> std::io::Result<Conn> {
        Conn::connect_with(addr, proto, Transport::Framed)
    }

    fn connect_with(addr: SocketAddr, proto: Proto, transport: Transport) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::new(),
            thrift: ThriftCodec::new(Some(transport), Some(Protocol::Binary), 1 << 20),
            transport,
            proto,
        })
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("the proxy closed the connection with a request in flight".into()),
            Ok(n) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("reading the reply: {e}")),
        }
    }

    /// One request whose reply must echo `text` under request id `id`.
    fn call(&mut self, id: u64, text: &str) -> Result<Answer, String> {
        match self.proto {
            Proto::Dubbo => self.dubbo_call(id, text),
            Proto::Thrift => self.thrift_call(id, text),
        }
    }

    fn dubbo_call(&mut self, id: u64, text: &str) -> Result<Answer, String> {
        let frame = RequestFrame {
            args: Args::String(text),
            ..RequestFrame::new(id, "com.example.Echo", "echo")
        }
        .encode();
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("sending: {e}"))?;
        let mut told_to_move = false;
        loop {
            while self.rbuf.len() >= 16 {
                let len = u32::from_be_bytes(self.rbuf[12..16].try_into().unwrap()) as usize;
                if self.rbuf.len() < 16 + len {
                    break;
                }
                let frame: Bytes = self.rbuf.split_to(16 + len).freeze();
                if frame[2] & 0x20 != 0 {
                    // An event: the read-only notice of a draining proxy.
                    told_to_move = true;
                    continue;
                }
                let r = parse_response(&frame).map_err(|e| format!("bad reply: {e}"))?;
                if r.header.id != id || r.header.status != 20 {
                    return Err(format!(
                        "request {id}: reply id {} status {} ({:?})",
                        r.header.id, r.header.status, r.error
                    ));
                }
                if !format!("{:?}", r.value).contains(text) {
                    return Err(format!(
                        "request {id}: reply {:?} is not the echo of {text}",
                        r.value
                    ));
                }
                let backend = r
                    .attachments
                    .iter()
                    .find(|(k, _)| k == "backend")
                    .map(|(_, v)| v.clone());
                return Ok(Answer {
                    backend,
                    told_to_move,
                    drain_header: None,
                });
            }
            self.fill()?;
        }
    }

    fn thrift_call(&mut self, id: u64, text: &str) -> Result<Answer, String> {
        let seqid = (id & 0x7fff_ffff) as i32;
        let mut out = BytesMut::new();
        write_call(
            &FrameSpec::new(self.transport, Protocol::Binary, "echo", seqid),
            text.as_bytes(),
            &mut out,
        )
        .unwrap();
        self.stream
            .write_all(&out)
            .map_err(|e| format!("sending: {e}"))?;
        loop {
            if let Some(reply) = self
                .thrift
                .decode(&mut self.rbuf)
                .map_err(|e| format!("bad reply: {e}"))?
            {
                if reply.request_id() != seqid as u64 {
                    return Err(format!("seqid {seqid}: reply seqid {}", reply.request_id()));
                }
                let got = metaproxy_thrift::frames::read_reply(&reply)
                    .map_err(|e| format!("bad reply: {e}"))?;
                if got != Reply::Success(Bytes::copy_from_slice(text.as_bytes())) {
                    return Err(format!("seqid {seqid}: {got:?} is not the echo of {text}"));
                }
                return Ok(Answer {
                    backend: None,
                    told_to_move: false,
                    drain_header: reply.metadata().get("metaproxy-drain").map(str::to_owned),
                });
            }
            self.fill()?;
        }
    }
}

/// Continuous load: per protocol, short-lived clients (one request per connection)
/// and long-lived ones (a connection that keeps calling for `lifetime`, across any
/// handover, then closes on its own; a Dubbo one also closes once told to move).
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(targets: &[(Proto, SocketAddr)], per_kind: usize, lifetime: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        let mut client = 0u64;
        for &(proto, addr) in targets {
            for long_lived in [false, true] {
                for _ in 0..per_kind {
                    client += 1;
                    let (stop, tally) = (stop.clone(), tally.clone());
                    threads.push(std::thread::spawn(move || {
                        run_client(client, proto, addr, long_lived, lifetime, &stop, &tally)
                    }));
                }
            }
        }
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally
    }
}

fn run_client(
    client: u64,
    proto: Proto,
    addr: SocketAddr,
    long_lived: bool,
    lifetime: Duration,
    stop: &AtomicBool,
    tally: &Tally,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match Conn::connect(addr, proto) {
            Ok(c) => c,
            Err(e) => {
                tally.refuse(format!("client {client} {proto:?}: connect: {e}"));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let opened = Instant::now();
        loop {
            n += 1;
            let id = (client << 32) | n;
            let text = format!("c{client}-r{n}");
            match conn.call(id, &text) {
                Ok(answer) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if answer.told_to_move {
                        tally.told_to_move.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Err(e) => {
                    tally.fail(format!("client {client} {proto:?} long={long_lived}: {e}"));
                    break;
                }
            }
            if !long_lived || opened.elapsed() >= lifetime || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        drop(conn);
        std::thread::sleep(Duration::from_millis(if long_lived { 1 } else { 4 }));
    }
}

fn assert_clean(tally: &Tally, at_least: u64) {
    let errors = tally.errors.lock().unwrap();
    assert_eq!(
        tally.refused.load(Ordering::Relaxed),
        0,
        "refused connections: {errors:#?}"
    );
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed or lost requests: {errors:#?}"
    );
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok >= at_least, "only {ok} requests answered");
}

// ---------------------------------------------------------------------------
// Fixtures

struct Backends {
    _rt: tokio::runtime::Runtime,
    dubbo_v1: backend::Backend,
    dubbo_v2: backend::Backend,
    thrift: backend::Backend,
}

fn backends() -> Backends {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (dubbo_v1, dubbo_v2, thrift) = rt.block_on(async {
        (
            backend::spawn(
                any,
                backend::dubbo_factory(),
                Default::default(),
                backend::dubbo_echo("v1"),
            )
            .await
            .unwrap(),
            backend::spawn(
                any,
                backend::dubbo_factory(),
                Default::default(),
                backend::dubbo_echo("v2"),
            )
            .await
            .unwrap(),
            backend::spawn(
                any,
                backend::thrift_factory(),
                Default::default(),
                backend::thrift_echo(),
            )
            .await
            .unwrap(),
        )
    });
    Backends {
        _rt: rt,
        dubbo_v1,
        dubbo_v2,
        thrift,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaproxy-hr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config with a Dubbo and a Thrift listener on port 0 (handed over by name), the
/// Dubbo route to `dubbo_cluster`, and with `legacy` one more Dubbo listener.
fn config(dir: &Path, file: &str, b: &Backends, dubbo_cluster: &str, legacy: bool) -> PathBuf {
    let mut text = format!(
        r#"
admin: {{address: "127.0.0.1:0"}}
hot_restart: {{socket: "{sock}", drain_timeout: {drain}s}}
listeners:
  - {{name: dubbo-in, address: "127.0.0.1:0", codec: dubbo, route_config: d}}
  - {{name: thrift-in, address: "127.0.0.1:0", codec: thrift, route_config: t}}
route_configs:
  - {{name: d, routes: [{{route: {{cluster: {dubbo_cluster}}}}}]}}
  - {{name: t, routes: [{{route: {{cluster: thrift}}}}]}}
clusters:
  - {{name: dubbo-v1, endpoints: ["{v1}"]}}
  - {{name: dubbo-v2, endpoints: ["{v2}"]}}
  - {{name: thrift, endpoints: ["{t}"]}}
"#,
        sock = dir.join("hr.sock").display(),
        drain = DRAIN_TIMEOUT.as_secs(),
        v1 = b.dubbo_v1.addr(),
        v2 = b.dubbo_v2.addr(),
        t = b.thrift.addr(),
    );
    if legacy {
        text = text.replace(
            "listeners:\n",
            "listeners:\n  - {name: legacy-in, address: \"127.0.0.1:0\", codec: dubbo, route_config: d}\n",
        );
    }
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

fn targets(p: &Proc) -> [(Proto, SocketAddr); 2] {
    [
        (Proto::Dubbo, p.listeners["dubbo-in"]),
        (Proto::Thrift, p.listeners["thrift-in"]),
    ]
}

/// Every listening socket on the proxy's ports.
fn listening(p: &Proc) -> BTreeSet<u64> {
    p.listeners
        .values()
        .chain([&p.admin])
        .flat_map(|a| listening_inodes(a.port()))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn three_hot_restarts_under_load_refuse_and_fail_nothing() {
    let b = backends();
    let dir = temp_dir("three");
    let cfg = config(&dir, "proxy.yaml", &b, "dubbo-v1", false);
    // Different worker counts each time: 2 sockets per listener are handed from 2
    // workers to 3, to 1 and back to 2.
    let mut old = start(&cfg, false, &[("METAPROXY_WORKERS", "2")]);
    let sockets = listening(&old);
    // 2 per listener + the admin socket.
    assert_eq!(sockets.len(), 5, "{sockets:?}");
    assert!(socket_inodes_of(old.pid()).is_superset(&sockets));
    assert_eq!(epoch(old.admin), 0);

    let load = Load::start(&targets(&old), 2, Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(300));
    let mut report = Vec::new();
    for (round, workers) in [(1, "3"), (2, "1"), (3, "2")] {
        let before = load.ok();
        let (new, took) = take_over(&cfg, &[("METAPROXY_WORKERS", workers)]);
        let handed_over = Instant::now();
        // The very same sockets, now held by the new process.
        assert_eq!(new.listeners, old.listeners);
        assert_eq!(new.admin, old.admin);
        assert_eq!(
            listening(&new),
            sockets,
            "round {round}: the listening sockets changed"
        );
        assert!(
            socket_inodes_of(new.pid()).is_superset(&sockets),
            "round {round}: the new process does not hold every listening socket"
        );
        assert_eq!(epoch(new.admin), round);
        let status = old
            .wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN)
            .unwrap_or_else(|| panic!("round {round}: the old process did not exit"));
        let exited = handed_over.elapsed();
        assert!(
            status.success(),
            "round {round}: old process exited with {status}"
        );
        let old_log = old.drain_log().join("\n");
        assert!(old_log.contains("draining"), "{old_log}");
        report.push(format!(
            "round {round}: {workers} workers; took over in {} ms (process start included); \
             the old process exited {} ms later; {} requests answered meanwhile",
            took.as_millis(),
            exited.as_millis(),
            load.ok() - before
        ));
        old = new;
        std::thread::sleep(Duration::from_millis(300));
    }
    let tally = load.finish();
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!(
        "total: {} requests, {} refused, {} failed, {} go-aways honoured",
        tally.ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.told_to_move.load(Ordering::Relaxed)
    );
    assert_clean(&tally, 200);
    // Dubbo clients that were connected to a draining process were told to move.
    assert!(tally.told_to_move.load(Ordering::Relaxed) > 0);

    // A clean stop removes the hot-restart socket.
    old.signal("-TERM");
    let status = old.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN).unwrap();
    assert!(status.success());
    assert!(!dir.join("hr.sock").exists());
}

#[test]
fn requests_follow_new_routes_once_the_new_process_accepts() {
    let b = backends();
    let dir = temp_dir("routes");
    // v2 routes Dubbo elsewhere and no longer has the legacy listener.
    let v1 = config(&dir, "v1.yaml", &b, "dubbo-v1", true);
    let v2 = config(&dir, "v2.yaml", &b, "dubbo-v2", false);
    // No running process: --takeover binds fresh sockets and says so.
    let mut old = start(&v1, true, &[("METAPROXY_WORKERS", "2")]);
    assert!(old
        .drain_log()
        .iter()
        .any(|l| l.contains("no running process") && l.contains("binding fresh sockets")));
    assert_eq!(epoch(old.admin), 0);
    let dubbo = old.listeners["dubbo-in"];
    let backend_of = |n: u64| {
        let mut c = Conn::connect(dubbo, Proto::Dubbo).unwrap();
        c.call(n, &format!("r{n}")).unwrap().backend.unwrap()
    };
    assert_eq!(backend_of(1), "v1");
    // Long-lived connections to the old process, open across the handover.
    let mut kept = Conn::connect(dubbo, Proto::Dubbo).unwrap();
    assert_eq!(kept.call(2, "kept").unwrap().backend.as_deref(), Some("v1"));
    let mut header =
        Conn::connect_with(old.listeners["thrift-in"], Proto::Thrift, Transport::Header).unwrap();
    assert_eq!(header.call(1, "before").unwrap().drain_header, None);
    // And one that stays open and quiet until the drain timeout closes it.
    let mut idle = Conn::connect(old.listeners["thrift-in"], Proto::Thrift).unwrap();
    idle.call(1, "then quiet").unwrap();
    let legacy = old.listeners["legacy-in"];

    let (new, _) = take_over(&v2, &[("METAPROXY_WORKERS", "1")]);
    let took_over = Instant::now();
    // Every connection made from now on reaches the new process and its routes.
    for n in 10..30 {
        assert_eq!(backend_of(n), "v2", "request {n}");
    }
    // The connection to the old process was told to move (Dubbo's read-only event);
    // a client that honours it sends nothing more, and the old process then closes it.
    let mut event = [0u8; 16];
    kept.stream.read_exact(&mut event).unwrap();
    assert_eq!(&event[..2], &[0xda, 0xbb]);
    assert_ne!(event[2] & 0x20, 0, "not an event: {event:?}");
    let body = u32::from_be_bytes(event[12..16].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; body];
    kept.stream.read_exact(&mut rest).unwrap();
    assert_eq!(
        kept.stream.read(&mut [0u8; 16]).unwrap(),
        0,
        "the old process keeps the connection"
    );
    drop(kept);
    // Thrift cannot say so unprompted: the old process keeps serving the connection, and
    // on the header transport every reply carries the drain header.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        header.call(2, "after").unwrap().drain_header.as_deref(),
        Some("1")
    );
    drop(header);
    assert_eq!(epoch(new.admin), 1);
    // The listener the new config does not have was closed by the old process.
    assert!(!new.listeners.contains_key("legacy-in"));
    assert!(
        TcpStream::connect(legacy).is_err(),
        "legacy listener still open"
    );
    assert!(old
        .drain_log()
        .iter()
        .any(|l| l.contains("the new config has no listener")));
    // What is left at drain_timeout is closed, and the old process exits 0.
    let status = old.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN).unwrap();
    assert!(status.success());
    assert!(
        took_over.elapsed() >= DRAIN_TIMEOUT - Duration::from_millis(500),
        "exited before drain_timeout with a connection open"
    );
    assert!(matches!(idle.stream.read(&mut [0u8; 1]), Ok(0) | Err(_)));
}

/// Sends a raw protocol frame.
fn send_frame(s: &mut UnixStream, json: &str) {
    s.write_all(&(json.len() as u32).to_be_bytes()).unwrap();
    s.write_all(json.as_bytes()).unwrap();
}

fn read_frame(s: &mut UnixStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn failed_takeovers_leave_the_running_process_serving() {
    let b = backends();
    let dir = temp_dir("failed");
    let cfg = config(&dir, "proxy.yaml", &b, "dubbo-v1", false);
    let sock = dir.join("hr.sock");
    // A socket file left by a crashed process is detected and replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut old = start(&cfg, false, &[("METAPROXY_WORKERS", "2")]);
    assert!(old
        .drain_log()
        .iter()
        .any(|l| l.contains("stale hot-restart socket")));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sockets = listening(&old);
    let load = Load::start(&targets(&old), 1, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(200));

    // A second process without --takeover refuses.
    let out = bin().args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another metaproxy process is running"),
        "{err}"
    );

    // An invalid config never reaches the running process.
    std::thread::sleep(Duration::from_millis(100));
    let logged = old.drain_log().len();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("cluster: dubbo-v1}", "cluster: nowhere}"),
    )
    .unwrap();
    let out = bin()
        .args(["run", "--takeover", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("nowhere"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    let after = &old.drain_log()[logged..];
    assert!(
        !after.iter().any(|l| l.contains("hot restart")),
        "the running process heard of an invalid config: {after:#?}"
    );

    // A new binary that dies after receiving the sockets, before asking for the drain.
    let (mut dying, _lines) = spawn(
        &cfg,
        true,
        &[(metaproxy::hot_restart::TEST_ABORT_AFTER_SOCKETS_ENV, "1")],
    );
    let status = dying.wait().unwrap();
    assert!(!status.success());
    old.wait_for("was abandoned", Duration::from_secs(10));

    // A protocol version mismatch is refused with a clear reason.
    let mut raw = UnixStream::connect(&sock).unwrap();
    send_frame(&mut raw, r#"{"type":"hello","version":99,"pid":1}"#);
    let reply = read_frame(&mut raw);
    assert_eq!(reply["type"], "refused");
    assert!(
        reply["reason"].as_str().unwrap().contains("version 99"),
        "{reply}"
    );
    drop(raw);

    // A takeover while another one is running is refused; the first one (a raw client
    // that never finishes) is abandoned when it goes away.
    let mut first = UnixStream::connect(&sock).unwrap();
    send_frame(
        &mut first,
        r#"{"type":"hello","version":1,"pid":1,"listeners":[],"admin":null}"#,
    );
    assert_eq!(read_frame(&mut first)["type"], "sockets");
    let out = bin()
        .args(["run", "--takeover", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another takeover is already in progress"),
        "{err}"
    );
    drop(first);
    old.wait_for("was abandoned", Duration::from_secs(10));

    // Through all of it the running process kept its sockets, its epoch and readiness.
    assert_eq!(listening(&old), sockets);
    assert_eq!(admin_get(old.admin, "/ready").0, 200);
    assert_eq!(epoch(old.admin), 0);
    assert!(old.child.try_wait().unwrap().is_none());
    std::thread::sleep(Duration::from_millis(200));

    // And a real takeover still works afterwards.
    let (new, _) = take_over(&cfg, &[("METAPROXY_WORKERS", "2")]);
    assert_eq!(listening(&new), sockets);
    let status = old.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN).unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(200));
    let tally = load.finish();
    assert_clean(&tally, 50);
}
