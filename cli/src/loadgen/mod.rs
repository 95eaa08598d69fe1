//! `metaproxy bench`: a load generator for Dubbo and Thrift servers and proxies.
//!
//! Clients are built on our own codecs: a request template is built once with the
//! codec's `frames` module and decoded into a [`meta_protocol::Message`]; every request
//! is that message with a fresh id, encoded by an upstream-side codec (exactly the
//! proxy's own id-rewrite path), and every reply is decoded by the same codec and checked
//! against its request: the id must belong to an outstanding request, the status must
//! be OK and the echoed payload must have the request's length. Anything else is counted
//! as an error, by kind, and kept out of the latency histogram.
//!
//! Two load models:
//!
//! - closed loop (default): each connection keeps `--pipeline` requests in flight;
//! - fixed rate (`--rate R`): requests are scheduled at `R` per second over all
//!   connections, and latency is measured from each request's *intended* send time, so a
//!   stall that delays sends shows up in the percentiles (no coordinated omission).
//!
//! ```text
//! metaproxy bench --protocol dubbo --target 127.0.0.1:20880 --connections 16 \
//!     --pipeline 4 --payload 4096 --duration 10s --json
//! ```

mod client;
mod report;
mod workload;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use report::{BenchReport, ErrorKind, LatencySummary};
pub use workload::{ThriftProtocolArg, ThriftTransportArg};

/// The protocol spoken by the load generator.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchProtocol {
    /// Dubbo 2 (hessian2).
    Dubbo,
    /// Apache Thrift.
    Thrift,
    /// Any codec the binary registers (`--codec NAME`), sending the request frame read
    /// from `--request-file` with a fresh id each time; a reply passes when its id is
    /// outstanding and its status is OK. This is how a custom binary benches its own
    /// protocol.
    Frame,
}

impl BenchProtocol {
    /// The protocol's name as in a listener's `codec:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchProtocol::Dubbo => "dubbo",
            BenchProtocol::Thrift => "thrift",
            BenchProtocol::Frame => "frame",
        }
    }
}

/// Arguments of `metaproxy bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The protocol to speak.
    #[arg(long, value_enum)]
    pub protocol: BenchProtocol,
    /// The server or proxy to load (`host:port`).
    #[arg(long)]
    pub target: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// How long to send (`10s`, `500ms`); ignored when `--requests` is given.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Send exactly this many requests (over all connections) instead of running for
    /// `--duration`.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Payload bytes per request (echoed back by echo backends).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Fixed-rate mode: requests per second over all connections; latency is measured
    /// from each request's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Thrift transport.
    #[arg(long, value_enum, default_value_t = ThriftTransportArg::Framed)]
    pub transport: ThriftTransportArg,
    /// Thrift protocol.
    #[arg(long = "thrift-protocol", value_enum, default_value_t = ThriftProtocolArg::Binary)]
    pub thrift_protocol: ThriftProtocolArg,
    /// Dubbo service interface (path).
    #[arg(long, default_value = "org.apache.dubbo.bench.EchoService")]
    pub interface: String,
    /// Method name (Dubbo method; Thrift message name, `Service:method` for the
    /// multiplexed protocol).
    #[arg(long, default_value = "echo")]
    pub method: String,
    /// Extra `KEY=VALUE` metadata sent with every request: Dubbo attachments, Thrift
    /// header-transport headers. Repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// With `--protocol frame`: the codec to speak, by its registered name (`dubbo`,
    /// `thrift`, or one the binary registers).
    #[arg(long)]
    pub codec: Option<String>,
    /// With `--protocol frame`: a file holding one request frame in the codec's wire
    /// format (for example captured from a client).
    #[arg(long = "request-file")]
    pub request_file: Option<std::path::PathBuf>,
    /// The codecs `--codec` is looked up in (the binary's registry; the reference
    /// codecs when unset).
    #[arg(skip)]
    pub codecs: Option<metaproxy::meta_protocol::CodecRegistry>,
    /// A request with no reply for this long counts as a `timeout` error (and its
    /// connection is reopened).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Worker threads of the load generator's runtime (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the text report (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl BenchArgs {
    /// Arguments with the CLI defaults for `protocol` against `target`.
    pub fn new(protocol: BenchProtocol, target: impl Into<String>) -> Self {
        BenchArgs {
            protocol,
            target: target.into(),
            connections: 16,
            duration: Duration::from_secs(10),
            requests: None,
            payload: 128,
            pipeline: 1,
            rate: None,
            transport: ThriftTransportArg::Framed,
            thrift_protocol: ThriftProtocolArg::Binary,
            interface: "org.apache.dubbo.bench.EchoService".to_owned(),
            method: "echo".to_owned(),
            headers: Vec::new(),
            codec: None,
            request_file: None,
            codecs: None,
            timeout: Duration::from_secs(10),
            threads: None,
            json: false,
        }
    }
}

/// Errors of `metaproxy bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An argument is out of range or inconsistent.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The target does not resolve.
    #[error("cannot resolve target {target:?}: {source}")]
    Resolve {
        /// The `--target` value.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request template cannot be built with these options.
    #[error("cannot build the {protocol} request: {message}")]
    Template {
        /// The protocol.
        protocol: &'static str,
        /// Why.
        message: String,
    },
    /// The runtime cannot start.
    #[error("cannot start the load generator's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No connection to the target could be opened at all.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The resolved target.
        target: SocketAddr,
        /// The last connect error.
        message: String,
    },
}

/// What every connection task shares.
pub(crate) struct Shared {
    /// Requests handed out so far (for `--requests`).
    issued: AtomicU64,
    /// The request budget, `u64::MAX` in duration mode.
    limit: u64,
    /// No new requests at or after this instant (duration mode).
    deadline: Option<Instant>,
    /// Replies and errors seen (progress bar).
    pub(crate) done: AtomicU64,
    /// Set once sending is over everywhere.
    stopped: AtomicBool,
    /// The last connect error message, if any.
    pub(crate) last_connect_error: std::sync::Mutex<Option<String>>,
    /// Successful connects.
    pub(crate) connects: AtomicU64,
}

impl Shared {
    /// Takes one request from the budget; false when sending is over.
    pub(crate) fn take(&self, now: Instant) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(d) = self.deadline {
            if now >= d {
                self.stopped.store(true, Ordering::Relaxed);
                return false;
            }
        }
        if self.limit == u64::MAX {
            return true;
        }
        if self.issued.fetch_add(1, Ordering::Relaxed) < self.limit {
            true
        } else {
            self.stopped.store(true, Ordering::Relaxed);
            false
        }
    }

    /// Whether sending is over.
    pub(crate) fn is_stopped(&self, now: Instant) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| now >= d)
    }
}

/// Runs `metaproxy bench`: prints the text report (or one JSON object with `--json`).
///
/// Returns the report after printing it; a caller (the binary) exits non-zero when
/// [`BenchReport::errors`] is not zero, so scripts can rely on the exit code.
pub fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let json = args.json;
    let report = run_bench(&args, !json && std::io::stderr().is_terminal())?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(report)
}

/// Runs a benchmark and returns its report, without printing it. `progress` shows a
/// progress bar on stderr.
pub fn run_bench(args: &BenchArgs, progress: bool) -> Result<BenchReport, BenchError> {
    validate(args)?;
    let target = args
        .target
        .to_socket_addrs()
        .map_err(|source| BenchError::Resolve {
            target: args.target.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| BenchError::Resolve {
            target: args.target.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    let workload = Arc::new(workload::Workload::new(args)?);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("bench");
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let rt = builder.build().map_err(BenchError::Runtime)?;
    rt.block_on(drive(args, target, workload, progress))
}

fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidArgs(m.to_owned()));
    if args.connections == 0 {
        return bad("--connections must be at least 1");
    }
    if args.pipeline == 0 {
        return bad("--pipeline must be at least 1");
    }
    if args.requests == Some(0) {
        return bad("--requests must be at least 1");
    }
    if args.requests.is_none() && args.duration.is_zero() {
        return bad("--duration must be positive");
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return bad("--rate must be a positive number of requests per second");
        }
    }
    if args.timeout.is_zero() {
        return bad("--timeout must be positive");
    }
    Ok(())
}

async fn drive(
    args: &BenchArgs,
    target: SocketAddr,
    workload: Arc<workload::Workload>,
    progress: bool,
) -> Result<BenchReport, BenchError> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        limit: args.requests.unwrap_or(u64::MAX),
        deadline: args.requests.is_none().then(|| start + args.duration),
        done: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        last_connect_error: std::sync::Mutex::new(None),
        connects: AtomicU64::new(0),
    });
    let bar = progress.then(|| progress_bar(args));
    let ticker = bar.clone().map(|bar| {
        let shared = shared.clone();
        let by_requests = args.requests.is_some();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if by_requests {
                    bar.set_position(shared.done.load(Ordering::Relaxed));
                } else {
                    bar.set_position(start.elapsed().as_millis() as u64);
                }
                bar.set_message(format!("{} replies", shared.done.load(Ordering::Relaxed)));
            }
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let cfg = client::ConnConfig {
            index: i,
            connections: args.connections,
            depth: args.pipeline,
            interval: args
                .rate
                .map(|r| Duration::from_secs_f64(args.connections as f64 / r)),
            timeout: args.timeout,
            start,
        };
        tasks.spawn(client::run_connection(
            cfg,
            target,
            workload.clone(),
            shared.clone(),
        ));
    }
    let mut total = report::Totals::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(stats) => total.merge(stats),
            Err(e) => total.record_error(ErrorKind::Internal, 1, Some(e.to_string())),
        }
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if shared.connects.load(Ordering::Relaxed) == 0 {
        let message = shared
            .last_connect_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "no connection opened".to_owned());
        return Err(BenchError::Connect { target, message });
    }
    Ok(BenchReport::new(args, target, elapsed, total))
}

fn progress_bar(args: &BenchArgs) -> indicatif::ProgressBar {
    let (len, template) = match args.requests {
        Some(n) => (
            n,
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests",
        ),
        None => (
            args.duration.as_millis() as u64,
            "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
        ),
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn cli_defaults_match_new() {
        let cli = Cli::try_parse_from(["x", "--protocol", "thrift", "--target", "h:1"]).unwrap();
        let d = BenchArgs::new(BenchProtocol::Thrift, "h:1");
        assert_eq!(cli.args.connections, d.connections);
        assert_eq!(cli.args.duration, d.duration);
        assert_eq!(cli.args.payload, d.payload);
        assert_eq!(cli.args.pipeline, d.pipeline);
        assert_eq!(cli.args.transport, d.transport);
        assert_eq!(cli.args.thrift_protocol, d.thrift_protocol);
        assert_eq!(cli.args.interface, d.interface);
        assert_eq!(cli.args.method, d.method);
        assert_eq!(cli.args.timeout, d.timeout);
    }

    #[test]
    fn headers_parse_and_bad_ones_are_rejected() {
        let cli = Cli::try_parse_from([
            "x",
            "--protocol",
            "dubbo",
            "--target",
            "h:1",
            "--header",
            "user=alice",
            "--header",
            "empty=",
        ])
        .unwrap();
        assert_eq!(
            cli.args.headers,
            vec![
                ("user".to_owned(), "alice".to_owned()),
                ("empty".to_owned(), String::new())
            ]
        );
        assert!(Cli::try_parse_from([
            "x",
            "--protocol",
            "dubbo",
            "--target",
            "h:1",
            "--header",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn validation_rejects_zero_sizes_and_bad_rates() {
        let base = BenchArgs::new(BenchProtocol::Dubbo, "127.0.0.1:1");
        for bad in [
            BenchArgs {
                connections: 0,
                ..base.clone()
            },
            BenchArgs {
                pipeline: 0,
                ..base.clone()
            },
            BenchArgs {
                requests: Some(0),
                ..base.clone()
            },
            BenchArgs {
                rate: Some(0.0),
                ..base.clone()
            },
            BenchArgs {
                rate: Some(f64::NAN),
                ..base.clone()
            },
        ] {
            assert!(matches!(validate(&bad), Err(BenchError::InvalidArgs(_))));
        }
        assert!(validate(&base).is_ok());
    }

    #[test]
    fn budget_stops_after_limit() {
        let s = Shared {
            issued: AtomicU64::new(0),
            limit: 3,
            deadline: None,
            done: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            last_connect_error: std::sync::Mutex::new(None),
            connects: AtomicU64::new(0),
        };
        let now = Instant::now();
        assert!(s.take(now) && s.take(now) && s.take(now));
        assert!(!s.take(now));
        assert!(s.is_stopped(now));
    }
}
