//! Per-listener access logs: one JSON line per request, written off the request path.
//!
//! Config shape, on a listener: `access_log: {path: FILE}`, where `stdout` or `-`
//! means standard output. A file is opened for appending and created if missing.
//!
//! [`AccessLogger::log`] never blocks and never waits for I/O: it hands the entry to a
//! bounded channel. A writer on tokio's blocking pool serialises each entry as one
//! JSON object per line into a buffered writer, flushing whenever the channel runs
//! empty (and at least once a second under steady load). When the channel is full
//! (a slow or stuck disk) the entry is dropped and counted ([`AccessLogger::dropped`]),
//! so a slow disk never slows requests.
//!
//! A line looks like this (keys in this order; `route`, `cluster` and `endpoint` are
//! `null` when the request never got that far):
//!
//! ```text
//! {"time":"2026-11-25T19:10:00.123456Z","listener":"dubbo-in","route":"beta-users",
//!  "cluster":"demo-v2","endpoint":"127.0.0.1:20882","metadata":{"interface":"com.example.DemoService"},
//!  "status":"ok","duration_us":1234,"bytes_in":310,"bytes_out":122}
//! ```
//!
//! - `time`: when the request was received, RFC 3339 in UTC with microseconds.
//! - `metadata`: the request metadata keys the listener's routes match on, with
//!   their values (keys absent from the request are left out).
//! - `status`: `ok`, `error` or `exception` for an upstream response, or the local
//!   reply reason (`no_route`, `upstream_failure`, `timeout`, `overloaded`,
//!   `bad_request`).
//! - `duration_us`: from receiving the request to writing its response, in whole
//!   **microseconds**.
//! - `bytes_in` / `bytes_out`: request and response frame sizes in bytes.

use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meta_protocol::{LocalReplyKind, ResponseStatus};
use serde::ser::SerializeMap;
use smallvec::SmallVec;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::task::JoinHandle;

/// Entries that may wait for the writer before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 8192;
/// Size of the writer's output buffer.
const BUFFER_SIZE: usize = 64 * 1024;
/// Longest time a written line may sit in the buffer under steady load.
const MAX_FLUSH_DELAY: Duration = Duration::from_secs(1);
/// Shortest time between two warnings about dropped entries.
const LOSS_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A listener's `access_log:` block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file to append to, or `stdout` / `-` for standard output.
    pub path: PathBuf,
}

impl AccessLogConfig {
    /// Whether this config means standard output.
    pub fn is_stdout(&self) -> bool {
        self.path == Path::new("stdout") || self.path == Path::new("-")
    }

    /// Opens the destination (creating the file if needed).
    pub fn open(&self) -> Result<AccessLogTarget, AccessLogError> {
        if self.is_stdout() {
            Ok(AccessLogTarget::stdout())
        } else {
            AccessLogTarget::file(&self.path)
        }
    }
}

/// Why an access log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// `access_log.path` is empty.
    #[error("access_log.path is empty (use a file name, or `stdout`)")]
    EmptyPath,
    /// The file could not be opened for appending.
    #[error("access_log: cannot open {path} for appending: {source}")]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
}

/// Where access log lines go.
pub struct AccessLogTarget {
    name: String,
    out: Box<dyn Write + Send>,
}

impl AccessLogTarget {
    /// Standard output.
    pub fn stdout() -> Self {
        AccessLogTarget {
            name: "stdout".to_owned(),
            out: Box::new(io::stdout()),
        }
    }

    /// A file, opened for appending and created if missing.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, AccessLogError> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(AccessLogError::EmptyPath);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AccessLogError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(AccessLogTarget {
            name: path.display().to_string(),
            out: Box::new(file),
        })
    }

    /// Any writer (for embedding programs and tests); `name` is used in log messages.
    pub fn writer(name: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        AccessLogTarget {
            name: name.into(),
            out,
        }
    }

    /// The file name, `stdout`, or the name given to [`AccessLogTarget::writer`].
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AccessLogTarget").field(&self.name).finish()
    }
}

/// How a request ended, as logged in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessStatus {
    /// The upstream answered (`ok`, `error` or `exception`).
    Response(ResponseStatus),
    /// The proxy answered itself (the local reply reason).
    Local(LocalReplyKind),
    /// A one-way request forwarded with no response expected (`oneway`).
    OneWay,
}

impl AccessStatus {
    /// The logged text.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessStatus::Response(s) => s.as_str(),
            AccessStatus::Local(k) => k.as_str(),
            AccessStatus::OneWay => "oneway",
        }
    }
}

/// The routing metadata of one request, copied into an inline buffer so that a log
/// entry keeps no frame alive and, for the usual few short values, allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggedMetadata {
    text: SmallVec<[u8; 192]>,
    /// End offsets in `text` of each key and its value.
    ends: SmallVec<[(u32, u32); 8]>,
}

impl LoggedMetadata {
    /// Empty; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key` = `value` (pairs are logged in insertion order; a repeated key is
    /// logged once per push, the last one winning in most JSON readers).
    pub fn push(&mut self, key: &str, value: &str) {
        self.text.extend_from_slice(key.as_bytes());
        let key_end = self.text.len();
        self.text.extend_from_slice(value.as_bytes());
        let value_end = self.text.len();
        // Offsets past 4 GiB cannot come from a frame under max_frame_size; clamp.
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.ends.push((clamp(key_end), clamp(value_end)));
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(k, v)| {
            let (k, v) = (k as usize, v as usize);
            let key = self.text.get(start..k).unwrap_or_default();
            let value = self.text.get(k..v).unwrap_or_default();
            start = v;
            // Both were pushed as &str, so they are whole UTF-8 sequences.
            (
                std::str::from_utf8(key).unwrap_or_default(),
                std::str::from_utf8(value).unwrap_or_default(),
            )
        })
    }
}

/// One request, as logged.
#[derive(Clone, Debug)]
pub struct AccessLogEntry {
    /// When the request was received.
    pub time: SystemTime,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The matched route's name, if a route matched.
    pub route: Option<Arc<str>>,
    /// The cluster the request was sent to, if any.
    pub cluster: Option<Arc<str>>,
    /// The upstream endpoint, if one was picked.
    pub endpoint: Option<SocketAddr>,
    /// The request metadata keys the routes match on, with their values.
    pub metadata: LoggedMetadata,
    /// How the request ended.
    pub status: AccessStatus,
    /// From receiving the request to writing its response.
    pub duration: Duration,
    /// Request frame size in bytes.
    pub bytes_in: u64,
    /// Response frame size in bytes (0 for one-way requests).
    pub bytes_out: u64,
}

struct Pairs<'a>(&'a LoggedMetadata);

impl serde::Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct Rfc3339(SystemTime);

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

struct Endpoint(Option<SocketAddr>);

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_none(),
        }
    }
}

impl serde::Serialize for AccessLogEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(10))?;
        map.serialize_entry("time", &Rfc3339(self.time))?;
        map.serialize_entry("listener", &*self.listener)?;
        map.serialize_entry("route", &self.route.as_deref())?;
        map.serialize_entry("cluster", &self.cluster.as_deref())?;
        map.serialize_entry("endpoint", &Endpoint(self.endpoint))?;
        map.serialize_entry("metadata", &Pairs(&self.metadata))?;
        map.serialize_entry("status", self.status.as_str())?;
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        map.serialize_entry("duration_us", &micros)?;
        map.serialize_entry("bytes_in", &self.bytes_in)?;
        map.serialize_entry("bytes_out", &self.bytes_out)?;
        map.end()
    }
}

/// The request-path handle of one access log. Cheap to clone; the writer stops (after
/// writing and flushing what is queued) once every clone is dropped.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    tx: mpsc::Sender<AccessLogEntry>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogger {
    /// Starts the writer for `target` with room for [`DEFAULT_CAPACITY`] queued entries.
    ///
    /// Must be called inside a tokio runtime (the writer runs on its blocking pool).
    /// The handle resolves when every [`AccessLogger`] clone is dropped and the queue
    /// is written and flushed, with the final flush's result; await it at shutdown.
    pub fn spawn(target: AccessLogTarget) -> (AccessLogger, JoinHandle<io::Result<()>>) {
        Self::spawn_with_capacity(target, DEFAULT_CAPACITY)
    }

    /// Like [`AccessLogger::spawn`] with room for `capacity` queued entries (at least 1).
    pub fn spawn_with_capacity(
        target: AccessLogTarget,
        capacity: usize,
    ) -> (AccessLogger, JoinHandle<io::Result<()>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        let handle = tokio::task::spawn_blocking(move || write_loop(rx, target, &writer_dropped));
        (AccessLogger { tx, dropped }, handle)
    }

    /// Queues `entry` without waiting; drops and counts it when the queue is full or
    /// the writer has stopped.
    #[inline]
    pub fn log(&self, entry: AccessLogEntry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Entries lost so far: dropped on a full queue or a stopped writer, or not
    /// written because the destination returned an error.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Warns, at most every [`LOSS_WARNING_INTERVAL`], when entries were lost since the
/// last warning.
fn warn_about_losses(
    name: &str,
    dropped: &AtomicU64,
    reported: &mut u64,
    last: &mut Option<Instant>,
) {
    let now = dropped.load(Ordering::Relaxed);
    if now == *reported || last.is_some_and(|t| t.elapsed() < LOSS_WARNING_INTERVAL) {
        return;
    }
    tracing::warn!(
        target = %name,
        lost = now - *reported,
        total_lost = now,
        "access log could not keep up; entries were dropped"
    );
    *reported = now;
    *last = Some(Instant::now());
}

fn write_loop(
    mut rx: mpsc::Receiver<AccessLogEntry>,
    target: AccessLogTarget,
    dropped: &AtomicU64,
) -> io::Result<()> {
    let AccessLogTarget { name, out } = target;
    let mut out = BufWriter::with_capacity(BUFFER_SIZE, out);
    let mut line = Vec::with_capacity(512);
    let mut last_flush = Instant::now();
    let mut failing = false;
    let mut reported_lost = 0u64;
    let mut last_warning: Option<Instant> = None;
    let report = |result: io::Result<()>, lost: u64, failing: &mut bool| match result {
        Ok(()) => {
            if *failing {
                tracing::info!(target = %name, "access log writable again");
                *failing = false;
            }
        }
        Err(error) => {
            dropped.fetch_add(lost, Ordering::Relaxed);
            if !*failing {
                tracing::error!(target = %name, %error, "access log write failed; dropping entries");
                *failing = true;
            }
        }
    };
    loop {
        let entry = match rx.try_recv() {
            Ok(entry) => entry,
            Err(TryRecvError::Empty) => {
                // Idle: make what was written visible, then wait.
                let result = out.flush();
                last_flush = Instant::now();
                report(result, 0, &mut failing);
                warn_about_losses(&name, dropped, &mut reported_lost, &mut last_warning);
                match rx.blocking_recv() {
                    Some(entry) => entry,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.clear();
        let result = serde_json::to_writer(&mut line, &entry)
            .map_err(io::Error::other)
            .and_then(|()| {
                line.push(b'\n');
                out.write_all(&line)
            });
        report(result, 1, &mut failing);
        if last_flush.elapsed() >= MAX_FLUSH_DELAY {
            let result = out.flush();
            last_flush = Instant::now();
            report(result, 0, &mut failing);
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;

    fn entry(i: u64) -> AccessLogEntry {
        let mut metadata = LoggedMetadata::new();
        metadata.push("interface", "com.example.DemoService");
        metadata.push("user", "ann \"the\" admin\n");
        AccessLogEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_097_800_123_456 + i),
            listener: Arc::from("dubbo-in"),
            route: Some(Arc::from("beta-users")),
            cluster: Some(Arc::from("demo-v2")),
            endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 20882))),
            metadata,
            status: AccessStatus::Response(ResponseStatus::Exception),
            duration: Duration::from_nanos(1_234_567),
            bytes_in: 310 + i,
            bytes_out: 122,
        }
    }

    fn temp_path(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!(
            "metaproxy-access-{tag}-{}-{nanos}.log",
            std::process::id()
        ))
    }

    #[test]
    fn config_shape_and_stdout_aliases() {
        let c: AccessLogConfig = serde_json::from_str(r#"{"path": "stdout"}"#).expect("parse");
        assert!(c.is_stdout());
        let c: AccessLogConfig = serde_json::from_str(r#"{"path": "-"}"#).expect("parse");
        assert!(c.is_stdout());
        let c: AccessLogConfig =
            serde_json::from_str(r#"{"path": "/var/log/a.log"}"#).expect("parse");
        assert!(!c.is_stdout());
        assert!(serde_json::from_str::<AccessLogConfig>(r#"{"path": "x", "fmt": 1}"#).is_err());
        assert!(matches!(
            AccessLogTarget::file(""),
            Err(AccessLogError::EmptyPath)
        ));
        let err = AccessLogConfig {
            path: PathBuf::from("/nonexistent-dir-metaproxy/a.log"),
        }
        .open()
        .expect_err("no such directory");
        assert!(
            err.to_string().contains("/nonexistent-dir-metaproxy/a.log"),
            "{err}"
        );
    }

    #[test]
    fn statuses_use_the_metric_words() {
        assert_eq!(AccessStatus::Response(ResponseStatus::Ok).as_str(), "ok");
        assert_eq!(
            AccessStatus::Local(LocalReplyKind::UpstreamFailure).as_str(),
            "upstream_failure"
        );
        assert_eq!(AccessStatus::OneWay.as_str(), "oneway");
    }

    #[test]
    fn metadata_pairs_round_trip_inline() {
        let info = allocation_counter::measure(|| {
            let mut m = LoggedMetadata::new();
            m.push("interface", "com.example.DemoService");
            m.push("method", "sayHello");
            m.push("", "");
            m.push("grüße", "✓");
            let pairs: SmallVec<[(&str, &str); 4]> = m.iter().collect();
            assert_eq!(
                pairs.as_slice(),
                &[
                    ("interface", "com.example.DemoService"),
                    ("method", "sayHello"),
                    ("", ""),
                    ("grüße", "✓")
                ]
            );
        });
        assert_eq!(info.count_total, 0, "short metadata stays inline");
        let mut m = LoggedMetadata::new();
        let long = "v".repeat(1000);
        m.push("k", &long);
        assert_eq!(m.iter().next(), Some(("k", long.as_str())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_are_json_with_every_field_and_flushed_on_shutdown() {
        let path = temp_path("fields");
        let target = AccessLogConfig { path: path.clone() }.open().expect("open");
        let (logger, writer) = AccessLogger::spawn(target);
        for i in 0..500 {
            logger.log(entry(i));
        }
        let mut local = entry(0);
        local.route = None;
        local.cluster = None;
        local.endpoint = None;
        local.metadata = LoggedMetadata::new();
        local.status = AccessStatus::Local(LocalReplyKind::NoRoute);
        logger.log(local);
        assert_eq!(logger.dropped(), 0);
        drop(logger);
        writer.await.expect("join").expect("final flush");

        let text = std::fs::read_to_string(&path).expect("read log");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 501);
        let first: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        let expected = serde_json::json!({
            "time": "2025-11-25T19:10:00.123456Z",
            "listener": "dubbo-in",
            "route": "beta-users",
            "cluster": "demo-v2",
            "endpoint": "127.0.0.1:20882",
            "metadata": {"interface": "com.example.DemoService", "user": "ann \"the\" admin\n"},
            "status": "exception",
            "duration_us": 1234,
            "bytes_in": 310,
            "bytes_out": 122,
        });
        assert_eq!(first, expected);
        // Keys come in the documented order.
        let order = [
            "time",
            "listener",
            "route",
            "cluster",
            "endpoint",
            "metadata",
            "status",
            "duration_us",
            "bytes_in",
            "bytes_out",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| lines[0].find(&format!("\"{k}\":")).expect("key present"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", lines[0]);
        for (i, line) in lines[..500].iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["bytes_in"], 310 + i as u64, "entries keep their order");
        }
        let last: serde_json::Value = serde_json::from_str(lines[500]).expect("json");
        assert_eq!(last["status"], "no_route");
        assert_eq!(last["route"], serde_json::Value::Null);
        assert_eq!(last["endpoint"], serde_json::Value::Null);
        assert_eq!(last["metadata"], serde_json::json!({}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_writer_flushes_without_shutdown() {
        let path = temp_path("idle");
        let (logger, writer) = AccessLogger::spawn(AccessLogTarget::file(&path).expect("open"));
        logger.log(entry(7));
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            text.lines().count(),
            1,
            "line visible while the logger is alive"
        );
        drop(logger);
        writer.await.expect("join").expect("flush");
        let _ = std::fs::remove_file(&path);
    }

    /// A destination whose first write blocks until the test opens the gate.
    struct Gate {
        entered: Option<std_mpsc::Sender<()>>,
        open: std_mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
                let _ = self.open.recv();
            }
            self.out
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_writer_never_blocks_log_and_overflow_is_counted() {
        const CAPACITY: usize = 16;
        const EXTRA: usize = 1000;
        let (entered_tx, entered_rx) = std_mpsc::channel();
        let (open_tx, open_rx) = std_mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            entered: Some(entered_tx),
            open: open_rx,
            out: out.clone(),
        };
        let (logger, writer) = AccessLogger::spawn_with_capacity(
            AccessLogTarget::writer("gate", Box::new(gate)),
            CAPACITY,
        );
        // The writer takes the first entry, flushes on idle and gets stuck in write.
        logger.log(entry(0));
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(5)))
            .await
            .expect("join")
            .expect("writer reached the destination");

        let started = Instant::now();
        for i in 1..=(CAPACITY + EXTRA) as u64 {
            logger.log(entry(i));
        }
        let spent = started.elapsed();
        assert!(spent < Duration::from_secs(1), "log() waited: {spent:?}");
        assert_eq!(logger.dropped(), EXTRA as u64);

        let _ = open_tx.send(());
        drop(logger);
        writer.await.expect("join").expect("flush");
        let text = String::from_utf8(out.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + CAPACITY);
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(
                v["bytes_in"],
                310 + i as u64,
                "the queued entries, in order"
            );
        }
    }

    /// A destination that always fails.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_errors_are_counted_and_a_stopped_writer_drops() {
        // Lines larger than the buffer reach the destination at once.
        let (logger, writer) =
            AccessLogger::spawn(AccessLogTarget::writer("broken", Box::new(Broken)));
        let mut big = entry(0);
        big.metadata.push("blob", &"x".repeat(BUFFER_SIZE + 1));
        logger.log(big.clone());
        logger.log(big);
        let deadline = Instant::now() + Duration::from_secs(5);
        while logger.dropped() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(logger.dropped(), 2);
        drop(logger);
        // The writer ends normally once the queue closes; the failure was reported.
        writer
            .await
            .expect("join")
            .expect("final flush has nothing left to write");

        // `log` on a queue whose writer is gone drops and counts.
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let closed = AccessLogger {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        closed.log(entry(1));
        assert_eq!(closed.dropped(), 1);
    }
}
