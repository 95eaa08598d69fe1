//! The demo's clients: a few pipelined connections per protocol that send a fixed mix
//! of requests (canary, beta users, unknown service) through the proxy and verify every
//! reply: payload echoed, answered by a backend the route allows, mutation applied, or
//! the expected local reply.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use meta_protocol::{Codec, Message, MessageKind, Side};
use metaproxy_dubbo::frames::{parse_response, Args, RequestFrame};
use metaproxy_dubbo::header::status;
use metaproxy_dubbo::hessian2::Value;
use metaproxy_dubbo::DubboCodec;
use metaproxy_thrift::frames::{read_reply, write_call, FrameSpec, Reply};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::{
    DUBBO_INTERFACE, DUBBO_UNKNOWN_INTERFACE, THRIFT_METHODS, THRIFT_UNKNOWN_METHOD,
};

/// How long a client waits for the next reply before giving the rest up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Error descriptions kept per client.
const MAX_SAMPLES: usize = 5;
/// Ordinary users (the canary route); `beta` goes to v2.
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// What a request is meant to exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Matches the canary route: 90/10 split, mirrored, `x-proxied-by` set.
    Canary,
    /// Carries `user: beta`: routed to v2, `x-route: beta` set.
    Beta,
    /// An interface / method without a route: local reply `no_route`.
    Unknown,
}

impl Kind {
    /// The request mix: 1 in 20 to an unknown service, 2 in 20 from beta users.
    pub fn of(seq: u64) -> Kind {
        match seq % 20 {
            0 => Kind::Unknown,
            5 | 15 => Kind::Beta,
            _ => Kind::Canary,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Dubbo, hessian2.
    Dubbo,
    /// Thrift on the header transport with this protocol (headers carry `user`).
    Thrift(Protocol),
}

/// What one client (or, merged, all clients of a protocol) saw.
#[derive(Clone, Debug)]
pub struct ClientStats {
    /// Requests written.
    pub sent: u64,
    /// Requests sent per [`Kind`] (canary, beta, unknown).
    pub sent_by_kind: [u64; 3],
    /// Verified replies from a backend.
    pub ok: u64,
    /// Local replies of the proxy, by reason (the reason names of docs/METRICS.md).
    pub local: BTreeMap<&'static str, u64>,
    /// Local replies that the request should not have got (a routed request answered
    /// locally, or an unknown one answered with another reason). Also in `local`.
    pub unexpected_local: u64,
    /// Wrong replies, replies that never came, broken connections.
    pub errors: u64,
    /// Replies to no request in flight (wrong, but not counted in `errors`, which
    /// counts requests).
    pub stray: u64,
    /// Verified replies per backend name.
    pub by_backend: BTreeMap<String, u64>,
    /// The first few error descriptions.
    pub samples: Vec<String>,
    /// A problem that stopped the client before it sent anything (cannot connect).
    pub fatal: Option<String>,
    /// Reply latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for ClientStats {
    fn default() -> Self {
        ClientStats {
            sent: 0,
            sent_by_kind: [0; 3],
            ok: 0,
            local: BTreeMap::new(),
            unexpected_local: 0,
            errors: 0,
            stray: 0,
            by_backend: BTreeMap::new(),
            samples: Vec::new(),
            fatal: None,
            latency: new_histogram(),
        }
    }
}

/// 1 µs to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl ClientStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ClientStats) {
        self.sent += other.sent;
        for (a, b) in self.sent_by_kind.iter_mut().zip(other.sent_by_kind) {
            *a += b;
        }
        self.ok += other.ok;
        for (k, v) in &other.local {
            *self.local.entry(k).or_default() += v;
        }
        self.unexpected_local += other.unexpected_local;
        self.errors += other.errors;
        self.stray += other.stray;
        for (k, v) in &other.by_backend {
            *self.by_backend.entry(k.clone()).or_default() += v;
        }
        for s in &other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s.clone());
            }
        }
        if self.fatal.is_none() {
            self.fatal.clone_from(&other.fatal);
        }
        // Same bounds on both sides, so this cannot fail; a failure would only lose
        // latency samples, never counts.
        let _ = self.latency.add(&other.latency);
    }

    /// Replies that were not what the demo expects: errors, unexpected local replies,
    /// stray replies.
    pub fn wrong(&self) -> u64 {
        self.errors + self.unexpected_local + self.stray
    }

    /// All local replies.
    pub fn local_total(&self) -> u64 {
        self.local.values().sum()
    }

    fn error(&mut self, n: u64, what: String) {
        self.errors += n;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(what);
        }
    }
}

/// How one reply turned out.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this backend, as the route says.
    Ok(String),
    /// A local reply of the proxy with this reason.
    Local(&'static str),
    /// Anything else.
    Wrong(String),
}

struct Pending {
    kind: Kind,
    sent: Instant,
}

/// One client connection's protocol state.
struct Wire {
    proto: Proto,
    codec: Box<dyn Codec>,
    scratch: String,
}

fn payload(scratch: &mut String, id: u64) -> &str {
    scratch.clear();
    let _ = write!(scratch, "hello #{id}");
    scratch
}

fn user_for(kind: Kind, id: u64) -> &'static str {
    match kind {
        Kind::Beta => "beta",
        _ => USERS
            .get((id % USERS.len() as u64) as usize)
            .copied()
            .unwrap_or("alice"),
    }
}

impl Wire {
    fn new(proto: Proto) -> Self {
        let max = meta_protocol::DEFAULT_MAX_FRAME_SIZE;
        let codec: Box<dyn Codec> = match proto {
            Proto::Dubbo => Box::new(DubboCodec::new(Side::Upstream, max)),
            Proto::Thrift(p) => Box::new(ThriftCodec::new(Some(Transport::Header), Some(p), max)),
        };
        Wire {
            proto,
            codec,
            scratch: String::with_capacity(32),
        }
    }

    fn encode(&mut self, kind: Kind, id: u64, dst: &mut BytesMut) -> Result<(), String> {
        let user = user_for(kind, id);
        let attachments = [("user", user)];
        let body = payload(&mut self.scratch, id);
        match self.proto {
            Proto::Dubbo => {
                let interface = match kind {
                    Kind::Unknown => DUBBO_UNKNOWN_INTERFACE,
                    _ => DUBBO_INTERFACE,
                };
                RequestFrame {
                    attachments: &attachments,
                    args: Args::String(body),
                    ..RequestFrame::new(id, interface, "sayHello")
                }
                .encode_into(dst);
                Ok(())
            }
            Proto::Thrift(p) => {
                let name = match kind {
                    Kind::Unknown => THRIFT_UNKNOWN_METHOD,
                    _ => THRIFT_METHODS
                        .get((id % 2) as usize)
                        .copied()
                        .unwrap_or("EchoService:echo"),
                };
                let seqid = i32::try_from(id).map_err(|_| "sequence ids exhausted".to_owned())?;
                let spec =
                    FrameSpec::new(Transport::Header, p, name, seqid).with_headers(&attachments);
                write_call(&spec, body.as_bytes(), dst).map_err(|e| e.to_string())
            }
        }
    }

    fn verify(&mut self, reply: &Message, kind: Kind, id: u64) -> Outcome {
        let expected = payload(&mut self.scratch, id);
        let answered = match self.proto {
            Proto::Dubbo => verify_dubbo(reply, expected),
            Proto::Thrift(_) => verify_thrift(reply, expected),
        };
        match answered {
            Answer::Local(reason) => Outcome::Local(reason),
            Answer::Wrong(w) => Outcome::Wrong(w),
            Answer::Backend { backend, headers } => {
                let get = |k: &str| {
                    headers
                        .iter()
                        .find(|(hk, _)| hk == k)
                        .map(|(_, v)| v.as_str())
                };
                match kind {
                    Kind::Unknown => Outcome::Wrong(format!(
                        "request to an unrouted service was answered by backend {backend:?}"
                    )),
                    Kind::Beta if backend != "v2" => {
                        Outcome::Wrong(format!("beta user answered by {backend:?}, not v2"))
                    }
                    Kind::Beta if get("x-route") != Some("beta") => Outcome::Wrong(
                        "beta request reached the backend without x-route: beta".into(),
                    ),
                    Kind::Canary if !matches!(backend.as_str(), "v1-a" | "v1-b" | "v2") => {
                        Outcome::Wrong(format!("canary request answered by {backend:?}"))
                    }
                    Kind::Canary if get("x-proxied-by") != Some("metaproxy") => Outcome::Wrong(
                        "canary request reached the backend without x-proxied-by: metaproxy".into(),
                    ),
                    _ => Outcome::Ok(backend),
                }
            }
        }
    }
}

enum Answer {
    Backend {
        backend: String,
        headers: Vec<(String, String)>,
    },
    Local(&'static str),
    Wrong(String),
}

fn verify_dubbo(reply: &Message, expected: &str) -> Answer {
    let p = match parse_response(reply.frame()) {
        Ok(p) => p,
        Err(e) => return Answer::Wrong(format!("dubbo reply does not parse: {e}")),
    };
    let reason = match p.header.status {
        status::OK => {
            if p.value.as_ref() != Some(&Value::String(expected.to_owned())) {
                return Answer::Wrong(format!(
                    "dubbo reply value {:?}, expected {expected:?}",
                    p.value
                ));
            }
            let Some(backend) = p
                .attachments
                .iter()
                .find(|(k, _)| k == "backend")
                .map(|(_, v)| v.clone())
            else {
                return Answer::Wrong("dubbo reply without the backend attachment".into());
            };
            return Answer::Backend {
                backend,
                headers: p.attachments,
            };
        }
        status::SERVICE_NOT_FOUND => "no_route",
        status::SERVER_ERROR => "upstream_failure",
        status::SERVER_TIMEOUT => "timeout",
        status::SERVER_THREADPOOL_EXHAUSTED_ERROR => "overloaded",
        status::BAD_REQUEST => "bad_request",
        other => {
            return Answer::Wrong(format!(
                "dubbo status {other}: {}",
                p.error.unwrap_or_default()
            ));
        }
    };
    Answer::Local(reason)
}

fn verify_thrift(reply: &Message, expected: &str) -> Answer {
    match read_reply(reply) {
        Err(e) => Answer::Wrong(format!("thrift reply does not parse: {e}")),
        Ok(Reply::Success(body)) if body == expected.as_bytes() => {
            let headers: Vec<(String, String)> = reply
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            match reply.metadata().get("backend") {
                Some(b) => Answer::Backend {
                    backend: b.to_owned(),
                    headers,
                },
                None => Answer::Wrong("thrift reply without the backend header".into()),
            }
        }
        Ok(Reply::Success(body)) => Answer::Wrong(format!(
            "thrift reply payload {:?}, expected {expected:?}",
            String::from_utf8_lossy(&body)
        )),
        Ok(Reply::AppException { kind, message }) => match kind {
            1 => Answer::Local("no_route"),
            6 if message.contains("timeout") => Answer::Local("timeout"),
            6 if message.contains("overloaded") => Answer::Local("overloaded"),
            6 => Answer::Local("upstream_failure"),
            7 => Answer::Local("bad_request"),
            k => Answer::Wrong(format!("thrift TApplicationException type {k}: {message}")),
        },
        Ok(other) => Answer::Wrong(format!("unexpected thrift reply {other:?}")),
    }
}

/// Runs one client until `stop` is set, then waits for the replies in flight.
/// `completed` is bumped once per reply (for the progress bar).
pub async fn run_client(
    proto: Proto,
    addr: SocketAddr,
    depth: usize,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            stats.fatal = Some(format!("cannot connect to the proxy at {addr}: {e}"));
            return stats;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(proto);
    let mut pending: HashMap<u64, Pending> = HashMap::with_capacity(depth * 2);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut next_id: u64 = 1;
    'conn: loop {
        if !stop.load(Ordering::Relaxed) {
            while pending.len() < depth {
                let id = next_id;
                next_id += 1;
                let kind = Kind::of(id - 1);
                if let Err(e) = wire.encode(kind, id, &mut wbuf) {
                    stats.fatal = Some(format!("cannot build a request: {e}"));
                    break 'conn;
                }
                stats.sent += 1;
                stats.sent_by_kind[kind.index()] += 1;
                pending.insert(
                    id,
                    Pending {
                        kind,
                        sent: Instant::now(),
                    },
                );
            }
        }
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(&wbuf).await {
                stats.error(0, format!("write to the proxy failed: {e}"));
                break;
            }
            wbuf.clear();
        }
        if pending.is_empty() {
            break;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, stream.read_buf(&mut rbuf)).await {
            Err(_) => {
                stats.error(0, format!("no reply within {REPLY_TIMEOUT:?}"));
                break;
            }
            Ok(Ok(0)) => {
                stats.error(0, "the proxy closed the connection".into());
                break;
            }
            Ok(Err(e)) => {
                stats.error(0, format!("read from the proxy failed: {e}"));
                break;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            let msg = match wire.codec.decode(&mut rbuf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    stats.error(0, format!("undecodable reply: {e}"));
                    break 'conn;
                }
            };
            match msg.kind() {
                MessageKind::Response => {}
                MessageKind::Heartbeat => {
                    let _ = wire.codec.encode_heartbeat_reply(&msg, &mut wbuf);
                    continue;
                }
                _ => continue,
            }
            let id = msg.request_id();
            let Some(p) = pending.remove(&id) else {
                // Not one of ours (no request to count it against): a wrong reply.
                stats.stray += 1;
                if stats.samples.len() < MAX_SAMPLES {
                    stats
                        .samples
                        .push(format!("reply to request id {id}, which is not in flight"));
                }
                continue;
            };
            let us = u64::try_from(p.sent.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            stats.latency.saturating_record(us);
            completed.fetch_add(1, Ordering::Relaxed);
            match wire.verify(&msg, p.kind, id) {
                Outcome::Ok(backend) => {
                    stats.ok += 1;
                    *stats.by_backend.entry(backend).or_default() += 1;
                }
                Outcome::Local(reason) => {
                    *stats.local.entry(reason).or_default() += 1;
                    if p.kind != Kind::Unknown || reason != "no_route" {
                        stats.unexpected_local += 1;
                        if stats.samples.len() < MAX_SAMPLES {
                            stats
                                .samples
                                .push(format!("{:?} request got a local reply: {reason}", p.kind));
                        }
                    }
                }
                Outcome::Wrong(what) => stats.error(1, what),
            }
        }
    }
    // Whatever is still in flight never got a reply.
    if !pending.is_empty() {
        let n = pending.len() as u64;
        stats.error(n, format!("{n} request(s) without a reply"));
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_has_every_kind_in_the_right_share() {
        let mut n = [0u32; 3];
        for seq in 0..2000 {
            n[Kind::of(seq).index()] += 1;
        }
        assert_eq!(n, [1700, 200, 100]);
        assert_eq!(
            Kind::of(0),
            Kind::Unknown,
            "the first request already shows a local reply"
        );
    }

    fn dubbo_backend_reply(req: &[u8], backend: &str) -> Message {
        let mut server = DubboCodec::new(Side::Downstream, 1 << 20);
        let mut b = BytesMut::from(req);
        let call = server.decode(&mut b).unwrap().unwrap();
        let resp =
            metaproxy_dubbo::frames::echo_response_with_attachments(&call, &[("backend", backend)])
                .unwrap();
        let mut client = DubboCodec::new(Side::Upstream, 1 << 20);
        let mut b = BytesMut::from(&resp[..]);
        client.decode(&mut b).unwrap().unwrap()
    }

    #[test]
    fn dubbo_verification_catches_wrong_backend_and_missing_mutation() {
        let mut wire = Wire::new(Proto::Dubbo);
        let mut req = BytesMut::new();
        wire.encode(Kind::Beta, 7, &mut req).unwrap();
        // Straight to v2 without the proxy: the x-route mutation is missing.
        let reply = dubbo_backend_reply(&req, "v2");
        assert!(
            matches!(wire.verify(&reply, Kind::Beta, 7), Outcome::Wrong(w) if w.contains("x-route"))
        );
        // Answered by v1: wrong backend for a beta user.
        let reply = dubbo_backend_reply(&req, "v1-a");
        assert!(
            matches!(wire.verify(&reply, Kind::Beta, 7), Outcome::Wrong(w) if w.contains("not v2"))
        );
        // A reply for another id carries another payload.
        let reply = dubbo_backend_reply(&req, "v2");
        assert!(
            matches!(wire.verify(&reply, Kind::Beta, 8), Outcome::Wrong(w) if w.contains("expected"))
        );
    }

    #[test]
    fn dubbo_local_reply_is_classified_by_status() {
        let mut wire = Wire::new(Proto::Dubbo);
        let f =
            metaproxy_dubbo::frames::ResponseFrame::error(3, status::SERVICE_NOT_FOUND, "no route")
                .encode();
        let mut client = DubboCodec::new(Side::Upstream, 1 << 20);
        let mut b = BytesMut::from(&f[..]);
        let reply = client.decode(&mut b).unwrap().unwrap();
        assert_eq!(
            wire.verify(&reply, Kind::Unknown, 3),
            Outcome::Local("no_route")
        );
    }

    #[test]
    fn thrift_verification_reads_backend_and_headers() {
        let mut wire = Wire::new(Proto::Thrift(Protocol::Compact));
        let mut req = BytesMut::new();
        wire.encode(Kind::Canary, 4, &mut req).unwrap();
        let mut server = ThriftCodec::new(None, None, 1 << 20);
        let call = server.decode(&mut req).unwrap().unwrap();
        assert_eq!(call.metadata().get("user"), Some(user_for(Kind::Canary, 4)));
        let spec = FrameSpec::new(Transport::Header, Protocol::Compact, "EchoService:echo", 4)
            .with_headers(&[("backend", "v1-b"), ("x-proxied-by", "metaproxy")]);
        let mut out = BytesMut::new();
        metaproxy_thrift::frames::write_reply(&spec, b"hello #4", &mut out).unwrap();
        let reply = wire.codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(
            wire.verify(&reply, Kind::Canary, 4),
            Outcome::Ok("v1-b".into())
        );
        assert!(matches!(
            wire.verify(&reply, Kind::Unknown, 4),
            Outcome::Wrong(_)
        ));
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = ClientStats {
            sent: 3,
            ok: 2,
            errors: 1,
            ..Default::default()
        };
        a.local.insert("no_route", 1);
        a.latency.record(100).unwrap();
        let mut b = a.clone();
        b.by_backend.insert("v2".into(), 2);
        a.merge(&b);
        assert_eq!((a.sent, a.ok, a.errors, a.local_total()), (6, 4, 2, 2));
        assert_eq!(a.by_backend.get("v2"), Some(&2));
        assert_eq!(a.latency.len(), 2);
    }
}
