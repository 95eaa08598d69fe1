//! Misbehaving kv backends and clients for the fault matrix (tests/faults.rs), and a
//! load driver that checks every two-way request gets exactly one matching reply.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{Codec, MessageKind};
use metaproxy_example_kv::{frames, KvCodec, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a hostile backend treats its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Accepts and never reads (its receive window fills up).
    NeverRead,
    /// Reads every request and never answers.
    NeverAnswer,
    /// Answers half of the first reply's bytes, then closes.
    CloseMidReply,
    /// Reads a request, then resets the connection (RST).
    Reset,
    /// Answers every request with bytes that are no kv frame.
    Garbage,
    /// Answers every request correctly after this many milliseconds.
    Slow(u64),
    /// Answers every request with a request id nobody asked for.
    WrongId,
    /// Answers each request correctly, then closes the connection.
    CloseAfterReply,
    /// Reads nothing for this many milliseconds, then echoes every request; counts
    /// the requests it received in [`HostileBackend::received`].
    StallThenEcho(u64),
}

/// A running hostile backend; stops on drop.
pub struct HostileBackend {
    pub addr: SocketAddr,
    /// Two-way requests decoded (all faults but `NeverRead`).
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend on loopback port 0 that misbehaves as `fault` says.
pub async fn hostile_backend(fault: Fault) -> HostileBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.spawn(serve_hostile(stream, fault, counter.clone()));
        }
    });
    HostileBackend {
        addr,
        received,
        task,
    }
}

/// An address nothing listens on: connections are refused.
pub async fn refusing_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn serve_hostile(mut stream: TcpStream, fault: Fault, received: Arc<AtomicUsize>) {
    match fault {
        Fault::NeverRead => {
            // Hold the socket open without reading until the test ends.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(stream);
            return;
        }
        Fault::StallThenEcho(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let mut codec = KvCodec::new(64 << 20);
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(msg)) = codec.decode(&mut buf) {
            if msg.kind() != MessageKind::Request {
                continue;
            }
            received.fetch_add(1, Ordering::SeqCst);
            let reply = frames::response(msg.request_id(), 0, &[], frames::body(&msg));
            match fault {
                Fault::NeverRead | Fault::NeverAnswer => {}
                Fault::CloseMidReply => {
                    let _ = stream.write_all(&reply[..reply.len() / 2]).await;
                    return;
                }
                Fault::Reset => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Fault::Garbage => {
                    let _ = stream
                        .write_all(b"\xff\xfe this is not a kv frame \x00\x01\x02")
                        .await;
                }
                Fault::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Fault::WrongId => {
                    let wrong =
                        frames::response(msg.request_id() + 1_000_000, 0, &[], frames::body(&msg));
                    if stream.write_all(&wrong).await.is_err() {
                        return;
                    }
                }
                Fault::StallThenEcho(_) => {
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Fault::CloseAfterReply => {
                    let _ = stream.write_all(&reply).await;
                    return;
                }
            }
        }
    }
}

/// What the load driver saw: replies by status, and bodies that were wrong.
#[derive(Debug, Default)]
pub struct Outcome {
    pub by_status: HashMap<u8, usize>,
    /// Replies with status Ok whose body is not the request's.
    pub wrong_bodies: usize,
}

impl Outcome {
    pub fn total(&self) -> usize {
        self.by_status.values().sum()
    }

    pub fn count(&self, status: Status) -> usize {
        self.by_status.get(&(status as u8)).copied().unwrap_or(0)
    }
}

/// Sends `per_client` two-way requests on each of `clients` connections, `window`
/// in flight at a time, to the route selected by `service`, and reads every reply.
/// Panics unless each request gets exactly one reply with its own id within
/// `patience`. Bodies are `body_len` bytes and unique per request.
pub async fn drive(
    addr: SocketAddr,
    service: &str,
    clients: usize,
    per_client: usize,
    window: usize,
    body_len: usize,
    patience: Duration,
) -> Outcome {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let service = service.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let mut codec = KvCodec::new(64 << 20);
            let mut buf = BytesMut::new();
            let mut bodies: HashMap<u64, Vec<u8>> = HashMap::new();
            let mut answered: HashSet<u64> = HashSet::new();
            let mut outcome = Outcome::default();
            let mut next = 0usize;
            let body_of = |i: usize| {
                let mut b = format!("client {c} request {i} ").into_bytes();
                b.resize(body_len.max(b.len()), b'x');
                b
            };
            while answered.len() < per_client {
                while next < per_client && bodies.len() - answered.len() < window {
                    let id = next as u64 + 1;
                    let body = body_of(next);
                    wr.write_all(&frames::request(id, &[("service", &service)], &body))
                        .await
                        .unwrap();
                    bodies.insert(id, body);
                    next += 1;
                }
                let msg = loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(m)) => break m,
                        Ok(None) => {}
                        Err(e) => panic!("bad frame from the proxy: {e}"),
                    }
                    let read = tokio::time::timeout(patience, rd.read_buf(&mut buf))
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "client {c}: no reply within {patience:?}; {} of {per_client} answered",
                                answered.len()
                            )
                        });
                    match read {
                        Ok(0) | Err(_) => panic!(
                            "client {c}: connection closed with {} of {per_client} answered",
                            answered.len()
                        ),
                        Ok(_) => {}
                    }
                };
                let id = msg.request_id();
                let body = bodies
                    .get(&id)
                    .unwrap_or_else(|| panic!("reply to unknown request id {id}"));
                assert!(answered.insert(id), "second reply to request {id}");
                let status = frames::status(&msg);
                if status == Status::Ok as u8 && frames::body(&msg) != body.as_slice() {
                    outcome.wrong_bodies += 1;
                }
                *outcome.by_status.entry(status).or_insert(0) += 1;
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await.unwrap();
        for (s, n) in o.by_status {
            *total.by_status.entry(s).or_insert(0) += n;
        }
        total.wrong_bodies += o.wrong_bodies;
    }
    total
}

/// A client that pipelines `count` requests with `body_len`-byte bodies and never
/// reads a reply. Returns the stream (still open) and how many requests it got out
/// before the proxy stopped reading or closed.
pub async fn never_reading_client(
    addr: SocketAddr,
    service: &str,
    count: usize,
    body_len: usize,
) -> (TcpStream, usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = vec![b'r'; body_len];
    let mut sent = 0;
    for i in 0..count {
        let frame = frames::request(i as u64 + 1, &[("service", service)], &body);
        match tokio::time::timeout(Duration::from_millis(200), stream.write_all(&frame)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    (stream, sent)
}

/// Sends a valid request one byte every `every`; returns when the proxy closes the
/// connection (with how long that took) or after `give_up`.
pub async fn drip(addr: SocketAddr, every: Duration, give_up: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let frame = frames::request(1, &[("service", "ok")], &[b'd'; 256]);
    let mut scratch = [0u8; 64];
    for byte in frame.iter().cycle() {
        if started.elapsed() > give_up {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // A closed connection shows as EOF (or a reset) on read.
        match tokio::time::timeout(every, stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

/// The value of an unlabelled sample, or the sum over a family's samples whose labels
/// contain `label` (as `key="value"`), in Prometheus text.
pub fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    metric_with(text, name, label.as_slice())
}

/// The sum over a family's samples whose labels contain every one of `labels` (each as
/// `key="value"`), in Prometheus text.
pub fn metric_with(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident set size of this process in KiB (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A Dubbo backend that answers calls (echo) and counts the heartbeats it gets;
/// answers them only when `answer_heartbeats`.
pub struct DubboHeartbeatBackend {
    pub addr: SocketAddr,
    pub heartbeats: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Connections the proxy closed.
    pub closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DubboHeartbeatBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn dubbo_heartbeat_backend(answer_heartbeats: bool) -> DubboHeartbeatBackend {
    use meta_protocol::{CodecContext, CodecFactory, CodecOptions};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heartbeats = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (h, c, x) = (heartbeats.clone(), connections.clone(), closed.clone());
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (h, x) = (h.clone(), x.clone());
            conns.spawn(async move {
                let protocol = metaproxy::dubbo::DubboCodecFactory
                    .configure(&CodecOptions::new())
                    .unwrap();
                let mut codec = protocol
                    .new_codec(&CodecContext::downstream(1 << 20))
                    .unwrap();
                let mut buf = BytesMut::new();
                loop {
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => {
                            x.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => {}
                    }
                    let mut out = BytesMut::new();
                    while let Ok(Some(msg)) = codec.decode(&mut buf) {
                        if msg.kind() == MessageKind::Heartbeat {
                            h.fetch_add(1, Ordering::SeqCst);
                            if !answer_heartbeats {
                                continue;
                            }
                        }
                        if let Some(reply) = metaproxy::dubbo::frames::echo_response(&msg) {
                            out.extend_from_slice(&reply);
                        }
                    }
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    DubboHeartbeatBackend {
        addr,
        heartbeats,
        connections,
        closed,
        task,
    }
}

/// One Dubbo call through `addr`; returns the reply's status byte.
pub async fn dubbo_call(stream: &mut TcpStream, id: u64) -> u8 {
    let frame =
        metaproxy::dubbo::frames::RequestFrame::new(id, "com.example.Echo", "echo").encode();
    stream.write_all(&frame).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if buf.len() >= 16 {
            let len = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
            if buf.len() >= 16 + len {
                let reply = buf.split_to(16 + len).freeze();
                let parsed = metaproxy::dubbo::frames::parse_response(&reply).unwrap();
                assert_eq!(parsed.header.id, id);
                return parsed.header.status;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf))
            .await
            .expect("no Dubbo reply within 5 s")
            .unwrap();
        assert!(n > 0, "proxy closed the Dubbo connection");
    }
}
