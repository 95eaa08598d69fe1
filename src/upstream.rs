//! Upstream connection pools and connections.
//!
//! Each upstream connection is one task that owns its socket, its codec and its table of
//! pending requests, so the request path takes no lock: requests arrive over a channel,
//! get a fresh connection-local request id (multiplexing many downstream connections over
//! few upstream ones), and responses go back to the downstream connection's channel with
//! the token it gave. Codecs that cannot multiplex get one request per connection at a
//! time.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use meta_protocol::{
    Codec, CodecCapabilities, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, Message, MessageKind, WireFormat,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::budget::BudgetCharge;
use crate::endpoint_link::{ConnectionSettings, EndpointLink};
use crate::observe::metrics::ClusterMetrics;
use crate::pending::PendingSlot;
use crate::request_token::RequestToken;

/// Requests in flight on one multiplexed connection before the pool opens another.
const MUX_SPREAD_THRESHOLD: u32 = 64;
/// Read buffer reservation.
const READ_CHUNK: usize = 64 * 1024;
/// Requests are encoded into the write buffer only while it holds less than this; the
/// rest wait in the connection's queue, where a request whose deadline passes is
/// dropped instead of being written late.
const WRITE_BATCH: usize = 256 * 1024;
/// Why a connection that the backend told to go away, or that was idle, closed.
const DRAINED: &str = "drained";
/// How often expired entries are swept and timeouts checked (at most; shorter
/// configured timeouts check more often).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pending entries are dropped this long after their deadline.
const SWEEP_GRACE: Duration = Duration::from_secs(1);

/// A listener's protocol: the codec configured once with the listener's options.
pub(crate) struct Protocol {
    pub(crate) id: u64,
    configured: Box<dyn ConfiguredProtocol>,
    pub(crate) max_frame_size: usize,
    pub(crate) caps: CodecCapabilities,
}

impl Protocol {
    /// Configures `factory` with the listener's `options` (parsed and checked here,
    /// once) and builds the protocol.
    pub(crate) fn new(
        id: u64,
        factory: Arc<dyn CodecFactory>,
        options: CodecOptions,
        max_frame_size: usize,
    ) -> Result<Self, CodecError> {
        let configured = factory.configure(&options)?;
        let caps = configured.capabilities();
        Ok(Protocol {
            id,
            configured,
            max_frame_size,
            caps,
        })
    }

    /// A codec for a client connection.
    pub(crate) fn downstream_codec(&self) -> Result<Box<dyn Codec>, CodecError> {
        self.configured
            .new_codec(&CodecContext::downstream(self.max_frame_size))
    }

    /// A codec for a backend connection carrying requests in `wire` format.
    pub(crate) fn upstream_codec(&self, wire: WireFormat) -> Result<Box<dyn Codec>, CodecError> {
        self.configured
            .new_codec(&CodecContext::upstream(self.max_frame_size, wire))
    }
}

/// Which pool of an endpoint a request uses: same protocol and same wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) protocol: u64,
    pub(crate) wire: WireFormat,
    /// The per-core worker that owns the pool (0 with the work-stealing runtime).
    pub(crate) worker: u16,
}

/// What a downstream connection hears back about a request it sent upstream.
pub(crate) enum DownstreamEvent {
    /// The backend answered.
    Response { token: RequestToken, msg: Message },
    /// The request failed. `unsent` carries it back when it never reached the backend,
    /// so it may be retried elsewhere. `stale` says it was never written because its
    /// connection went away between requests (closed by the backend after answering
    /// others, idle, drained): a retry on a fresh connection that does not count
    /// against the route's retries nor as an endpoint failure.
    Failed {
        token: RequestToken,
        unsent: Option<Message>,
        reason: &'static str,
        stale: bool,
    },
}

/// Where to deliver the response of a request.
pub(crate) struct ReplyTo {
    pub(crate) tx: mpsc::UnboundedSender<DownstreamEvent>,
    pub(crate) token: RequestToken,
}

/// A request on its way to an upstream connection.
pub(crate) struct Outbound {
    pub(crate) msg: Message,
    /// `None` for one-way calls and mirror copies: the response (if any) is dropped.
    pub(crate) reply: Option<ReplyTo>,
    pub(crate) deadline: Instant,
    /// For mirror copies and one-way calls: the cluster slot this request holds until
    /// it is written (one-way) or answered or expired (mirror).
    pub(crate) slot: Option<PendingSlot>,
    /// For mirror copies and one-way calls: their bytes in the process-wide budget,
    /// held as long as the slot.
    pub(crate) charge: Option<BudgetCharge>,
}

impl Outbound {
    fn fail(self, sent: bool, reason: &'static str) {
        self.fail_as(sent, false, reason);
    }

    fn fail_as(self, sent: bool, stale: bool, reason: &'static str) {
        if let Some(reply) = self.reply {
            let unsent = if sent { None } else { Some(self.msg) };
            let _ = reply.tx.send(DownstreamEvent::Failed {
                token: reply.token,
                unsent,
                reason,
                stale,
            });
        }
    }
}

/// What [`Pool::choose`] found.
enum Choice<'a> {
    /// A usable connection with room.
    Fit(&'a Arc<ConnHandle>),
    /// Every usable connection is at the threshold.
    Full { least: Option<&'a Arc<ConnHandle>> },
}

/// The pool's view of one upstream connection task.
pub(crate) struct ConnHandle {
    tx: mpsc::UnboundedSender<Outbound>,
    load: AtomicU32,
    alive: AtomicBool,
    accepting: AtomicBool,
}

impl ConnHandle {
    fn usable(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && self.accepting.load(Ordering::Relaxed)
    }

    /// Requests queued or in flight on this connection.
    pub(crate) fn load(&self) -> u32 {
        self.load.load(Ordering::Relaxed)
    }

    /// Queues `out`; gives it back when the connection is gone.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the request back for a retry without a heap allocation"
    )]
    pub(crate) fn send(&self, out: Outbound) -> Result<(), Outbound> {
        self.load.fetch_add(1, Ordering::Relaxed);
        self.tx.send(out).map_err(|e| {
            self.load.fetch_sub(1, Ordering::Relaxed);
            e.0
        })
    }
}

/// Connections to one endpoint for one [`PoolKey`].
pub(crate) struct Pool {
    pub(crate) key: PoolKey,
    addr: SocketAddr,
    protocol: Arc<Protocol>,
    conns: ArcSwap<Vec<Arc<ConnHandle>>>,
    create_lock: Mutex<()>,
    metrics: ClusterMetrics,
}

impl Pool {
    pub(crate) fn new(
        key: PoolKey,
        addr: SocketAddr,
        protocol: Arc<Protocol>,
        metrics: ClusterMetrics,
    ) -> Self {
        Pool {
            key,
            addr,
            protocol,
            conns: ArcSwap::from_pointee(Vec::new()),
            create_lock: Mutex::new(()),
            metrics,
        }
    }

    /// The least loaded usable connection, if any.
    pub(crate) fn least_loaded(&self) -> Option<Arc<ConnHandle>> {
        self.conns
            .load()
            .iter()
            .filter(|c| c.usable())
            .min_by_key(|c| c.load())
            .cloned()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.conns
            .load()
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .count()
    }

    /// First fit: the first usable connection below `threshold` in-flight requests, so
    /// traffic concentrates on few connections and batches into few writes (spreading a
    /// pipelined client over many idle connections costs a syscall per request). Also
    /// the least-loaded usable connection, for when all are full.
    fn choose(conns: &[Arc<ConnHandle>], threshold: u32) -> Choice<'_> {
        let mut least: Option<&Arc<ConnHandle>> = None;
        for c in conns.iter().filter(|c| c.usable()) {
            let load = c.load.load(Ordering::Relaxed);
            if load < threshold {
                return Choice::Fit(c);
            }
            if least.is_none_or(|b| load < b.load.load(Ordering::Relaxed)) {
                least = Some(c);
            }
        }
        Choice::Full { least }
    }

    /// A connection for the next request: the first one with room, or a new one when
    /// all are busy and the endpoint is below `max_connections` (counted over every
    /// worker's pool), or else the least loaded. `None` when this pool has no usable
    /// connection and the endpoint may not open another.
    pub(crate) fn pick(&self, endpoint: &Arc<EndpointLink>) -> Option<Arc<ConnHandle>> {
        let threshold = if self.protocol.caps.multiplexing {
            MUX_SPREAD_THRESHOLD
        } else {
            1
        };
        // A connection to use without opening one: one with room, or the least loaded
        // when the endpoint is at its limit.
        let reuse = |conns: &[Arc<ConnHandle>]| match Self::choose(conns, threshold) {
            Choice::Fit(c) => Some(c.clone()),
            Choice::Full { least: Some(c), .. } if !endpoint.may_open() => Some(c.clone()),
            Choice::Full { .. } => None,
        };
        if let Some(c) = reuse(&self.conns.load()) {
            return Some(c);
        }
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.conns.load_full();
        if let Some(c) = reuse(&current) {
            return Some(c);
        }
        let Some(open) = endpoint.reserve_connection() else {
            return match Self::choose(&current, threshold) {
                Choice::Fit(c) => Some(c.clone()),
                Choice::Full { least, .. } => least.cloned(),
            };
        };
        let handle = self.spawn_connection(endpoint, open);
        let mut next: Vec<Arc<ConnHandle>> = current
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .cloned()
            .collect();
        next.push(handle.clone());
        self.conns.store(Arc::new(next));
        Some(handle)
    }

    fn spawn_connection(
        &self,
        endpoint: &Arc<EndpointLink>,
        open: Arc<AtomicUsize>,
    ) -> Arc<ConnHandle> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(ConnHandle {
            tx,
            load: AtomicU32::new(0),
            alive: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        });
        let conn = UpstreamConnection {
            handle: handle.clone(),
            rx,
            addr: self.addr,
            protocol: self.protocol.clone(),
            wire: self.key.wire,
            settings: endpoint.settings(),
            endpoint: Arc::downgrade(endpoint),
            open: Some(OpenConnection(open)),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(conn.run());
        handle
    }
}

/// Pending requests by connection-local id (ids are small integers: a fast hasher).
type PendingMap = HashMap<u64, Pending, ahash::RandomState>;

struct Pending {
    reply: Option<ReplyTo>,
    deadline: Instant,
    _slot: Option<PendingSlot>,
    _charge: Option<BudgetCharge>,
}

impl Pending {
    /// Hands a request that was never written back for a retry.
    fn fail_unwritten(self, msg: Message, stale: bool, reason: &'static str) {
        if let Some(reply) = self.reply {
            let _ = reply.tx.send(DownstreamEvent::Failed {
                token: reply.token,
                unsent: Some(msg),
                reason,
                stale,
            });
        }
    }
}

/// What one upstream connection holds besides its socket and codec.
struct ConnState {
    /// Requests written (or being written), by connection-local id.
    pending: PendingMap,
    /// Requests taken from the pool, not yet encoded (see [`WRITE_BATCH`]).
    queue: VecDeque<Outbound>,
    /// Two-way requests encoded but not completely written: (end offset in the
    /// output stream, id, request), oldest first. Kept for a retry should the
    /// connection go away before they are written.
    unwritten: VecDeque<(u64, u64, Message)>,
    /// Bytes encoded into / written from the output stream so far.
    encoded: u64,
    written: u64,
    next_id: u32,
    /// Responses received on this connection.
    answered: u64,
}

impl ConnState {
    /// Records `n` more bytes written; requests written in full are sent.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        while self
            .unwritten
            .front()
            .is_some_and(|(end, _, _)| *end <= self.written)
        {
            self.unwritten.pop_front();
        }
    }

    /// Drops queued requests whose deadline passed (never written late) and pending
    /// entries long past theirs.
    fn sweep(&mut self, now: Instant, handle: &ConnHandle) {
        let mut dropped = 0u32;
        self.queue.retain(|out| {
            let keep = out.deadline > now;
            dropped += u32::from(!keep);
            keep
        });
        let before = self.pending.len();
        self.pending.retain(|_, p| p.deadline + SWEEP_GRACE > now);
        dropped += (before - self.pending.len()) as u32;
        if dropped > 0 {
            handle.load.fetch_sub(dropped, Ordering::Relaxed);
        }
    }
}

/// One count of an endpoint's open connections, given back when the connection ends.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct UpstreamConnection {
    /// Counts against the endpoint's `max_connections`; given back as soon as the
    /// connection is gone, before its requests are handed back for retries.
    open: Option<OpenConnection>,
    handle: Arc<ConnHandle>,
    rx: mpsc::UnboundedReceiver<Outbound>,
    addr: SocketAddr,
    protocol: Arc<Protocol>,
    wire: WireFormat,
    settings: ConnectionSettings,
    endpoint: Weak<EndpointLink>,
    metrics: ClusterMetrics,
}

impl UpstreamConnection {
    async fn run(mut self) {
        let connect = TcpStream::connect(self.addr);
        let stream = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.connect_failed(&e.to_string()),
            Err(_) => return self.connect_failed("connect timeout"),
        };
        let _ = stream.set_nodelay(true);
        if let Some(ep) = self.endpoint.upgrade() {
            ep.connected();
        }
        let codec = match self.protocol.upstream_codec(self.wire) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot create upstream codec");
                return self.connect_failed("codec error");
            }
        };
        self.metrics.upstream_connections_active.inc();
        let mut state = ConnState {
            pending: HashMap::with_capacity_and_hasher(64, ahash::RandomState::new()),
            queue: VecDeque::new(),
            unwritten: VecDeque::new(),
            encoded: 0,
            written: 0,
            next_id: 0,
            answered: 0,
        };
        let reason = self.serve(stream, codec, &mut state).await;
        self.metrics.upstream_connections_active.dec();
        self.handle.alive.store(false, Ordering::Relaxed);
        drop(self.open.take());
        tracing::debug!(addr = %self.addr, reason, pending = state.pending.len(), "upstream connection closed");
        // Requests never written go back for a retry. When the connection had served
        // requests (the backend closed it between requests) or the proxy retired it
        // (idle, go-away), the retry is on the house.
        let stale = state.answered > 0 || reason == DRAINED;
        let mut retried = 0u32;
        for (_, id, msg) in state.unwritten.drain(..) {
            if let Some(p) = state.pending.remove(&id) {
                retried += 1;
                p.fail_unwritten(msg, stale, reason);
            }
        }
        for (_, p) in state.pending.drain() {
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
            if let Some(reply) = p.reply {
                let _ = reply.tx.send(DownstreamEvent::Failed {
                    token: reply.token,
                    unsent: None,
                    reason: "upstream connection closed before replying",
                    stale: false,
                });
            }
        }
        self.handle.load.fetch_sub(retried, Ordering::Relaxed);
        for out in state.queue.drain(..) {
            out.fail_as(false, stale, "upstream connection closed");
        }
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            out.fail_as(false, stale, "upstream connection closed");
        }
    }

    fn connect_failed(mut self, why: &str) {
        tracing::debug!(addr = %self.addr, why, "upstream connect failed");
        self.handle.alive.store(false, Ordering::Relaxed);
        drop(self.open.take());
        if let Some(ep) = self.endpoint.upgrade() {
            ep.connect_failed();
        }
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            out.fail(false, "upstream connect failed");
        }
    }

    async fn serve(
        &mut self,
        stream: TcpStream,
        mut codec: Box<dyn Codec>,
        st: &mut ConnState,
    ) -> &'static str {
        let settings = self.settings;
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
        let tick_every = [
            SWEEP_EVERY,
            settings.write_timeout / 2,
            settings.idle_timeout / 2,
            settings.heartbeat_interval / 2,
        ]
        .into_iter()
        .min()
        .unwrap_or(SWEEP_EVERY)
        .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let multiplexing = self.protocol.caps.multiplexing;
        let mut rx_open = true;
        let mut last_read = Instant::now();
        let mut last_busy = Instant::now();
        let mut write_stalled: Option<Instant> = None;
        let mut heartbeat_sent: Option<Instant> = None;
        let mut has_heartbeat = true;
        loop {
            if !self.handle.accepting.load(Ordering::Relaxed)
                && st.pending.is_empty()
                && wbuf.is_empty()
            {
                // Told to go away (or idle) and everything owed has arrived.
                return DRAINED;
            }
            // Encode queued requests while the write buffer has room (and the backend
            // still takes requests on this connection).
            let accepting = self.handle.accepting.load(Ordering::Relaxed);
            while accepting && wbuf.len() < WRITE_BATCH && (multiplexing || st.pending.is_empty()) {
                let Some(out) = st.queue.pop_front() else {
                    break;
                };
                self.enqueue(out, st, &mut *codec, &mut wbuf);
            }
            if wbuf.is_empty() {
                write_stalled = None;
            } else if write_stalled.is_none() {
                write_stalled = Some(Instant::now());
            }
            tokio::select! {
                biased;
                ready = stream.readable() => {
                    if let Err(e) = ready { tracing::debug!(error = %e, "upstream readable"); return "read error"; }
                    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 { rbuf.reserve(READ_CHUNK); }
                    match crate::socket_io::read_once(&stream, &mut rbuf) {
                        Ok(0) => return "closed by upstream",
                        Ok(_) => {
                            last_read = Instant::now();
                            heartbeat_sent = None;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return "read error",
                    }
                    loop {
                        match codec.decode(&mut rbuf) {
                            Ok(Some(msg)) => {
                                st.answered += u64::from(msg.kind() == MessageKind::Response);
                                self.on_message(msg, &mut st.pending, &mut *codec, &mut wbuf);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                crate::observe::rate_limited!(tracing::Level::WARN, addr = %self.addr, error = %e, "bad frame from upstream");
                                return "decode error";
                            }
                        }
                    }
                }
                out = self.rx.recv(), if rx_open => {
                    let Some(out) = out else {
                        rx_open = false;
                        if st.pending.is_empty() && st.queue.is_empty() { return "pool closed"; }
                        continue;
                    };
                    st.queue.push_back(out);
                    while let Ok(out) = self.rx.try_recv() {
                        st.queue.push_back(out);
                    }
                }
                ready = stream.writable(), if !wbuf.is_empty() => {
                    if ready.is_err() { return "write error"; }
                    match stream.try_write(&wbuf) {
                        Ok(n) => {
                            bytes::Buf::advance(&mut wbuf, n);
                            if n > 0 {
                                write_stalled = None;
                                st.wrote(n);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return "write error",
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    st.sweep(now, &self.handle);
                    if !rx_open && st.pending.is_empty() && st.queue.is_empty() { return "pool closed"; }
                    if write_stalled.is_some_and(|t| now.duration_since(t) >= settings.write_timeout) {
                        return "write timeout: the backend stopped reading";
                    }
                    if !st.pending.is_empty() || !st.queue.is_empty() || !wbuf.is_empty() {
                        last_busy = now;
                    } else if now.duration_since(last_busy) >= settings.idle_timeout {
                        // Stop taking requests; the drained check above closes it.
                        self.handle.accepting.store(false, Ordering::Relaxed);
                        continue;
                    }
                    match heartbeat_sent {
                        Some(at) if now.duration_since(at) >= settings.heartbeat_interval => {
                            return "heartbeat unanswered";
                        }
                        None if has_heartbeat
                            && now.duration_since(last_read) >= settings.heartbeat_interval =>
                        {
                            st.next_id = st.next_id.wrapping_add(1) & 0x7fff_ffff;
                            match codec.encode_heartbeat(u64::from(st.next_id), &mut wbuf) {
                                Ok(true) => heartbeat_sent = Some(now),
                                Ok(false) | Err(_) => has_heartbeat = false,
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn enqueue(
        &mut self,
        mut out: Outbound,
        st: &mut ConnState,
        codec: &mut dyn Codec,
        wbuf: &mut BytesMut,
    ) {
        if out.deadline <= Instant::now() {
            // The client already got its timeout reply; never write it late.
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
            return out.fail(false, "request expired before it was written");
        }
        let two_way = out.msg.kind() == MessageKind::Request;
        let id = loop {
            st.next_id = st.next_id.wrapping_add(1) & 0x7fff_ffff;
            if !st.pending.contains_key(&u64::from(st.next_id)) {
                break u64::from(st.next_id);
            }
        };
        out.msg.set_request_id(id);
        let before = wbuf.len();
        if let Err(e) = codec.encode(&out.msg, wbuf) {
            crate::observe::rate_limited!(tracing::Level::WARN, error = %e, "cannot encode request for upstream");
            wbuf.truncate(before);
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
            out.fail(true, "request could not be encoded for upstream");
            return;
        }
        st.encoded += (wbuf.len() - before) as u64;
        if two_way {
            if out.reply.is_some() {
                st.unwritten.push_back((st.encoded, id, out.msg));
            }
            st.pending.insert(
                id,
                Pending {
                    reply: out.reply,
                    deadline: out.deadline,
                    _slot: out.slot,
                    _charge: out.charge,
                },
            );
        } else {
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn on_message(
        &mut self,
        msg: Message,
        pending: &mut PendingMap,
        codec: &mut dyn Codec,
        wbuf: &mut BytesMut,
    ) {
        match msg.kind() {
            MessageKind::Response => {
                let Some(p) = pending.remove(&msg.request_id()) else {
                    tracing::debug!(
                        id = msg.request_id(),
                        "response for unknown or expired request"
                    );
                    return;
                };
                self.handle.load.fetch_sub(1, Ordering::Relaxed);
                if let Some(reply) = p.reply {
                    let _ = reply.tx.send(DownstreamEvent::Response {
                        token: reply.token,
                        msg,
                    });
                }
            }
            MessageKind::Heartbeat => {
                if let Err(e) = codec.encode_heartbeat_reply(&msg, wbuf) {
                    tracing::debug!(error = %e, "cannot answer upstream heartbeat");
                }
            }
            MessageKind::GoAway => {
                tracing::debug!(addr = %self.addr, "upstream asked to stop sending on this connection");
                self.handle.accepting.store(false, Ordering::Relaxed);
            }
            MessageKind::Event => {}
            MessageKind::Request | MessageKind::OneWay => {
                tracing::debug!(addr = %self.addr, "ignoring a call sent by an upstream");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn state() -> ConnState {
        ConnState {
            pending: HashMap::with_hasher(ahash::RandomState::new()),
            queue: VecDeque::new(),
            unwritten: VecDeque::new(),
            encoded: 0,
            written: 0,
            next_id: 0,
            answered: 0,
        }
    }

    fn request(id: u64) -> Message {
        Message::new(MessageKind::Request, id, Bytes::from_static(b"frame"))
    }

    #[test]
    fn a_request_is_unwritten_until_its_last_byte_is_written() {
        let mut st = state();
        for (end, id) in [(100, 1), (200, 2), (300, 3)] {
            st.unwritten.push_back((end, id, request(id)));
        }
        st.wrote(150);
        let left: Vec<u64> = st.unwritten.iter().map(|(_, id, _)| *id).collect();
        assert_eq!(left, [2, 3], "request 2 is half written: still unwritten");
        st.wrote(50);
        assert_eq!(st.unwritten.len(), 1);
        st.wrote(100);
        assert!(st.unwritten.is_empty());
    }

    #[test]
    fn sweeping_drops_queued_requests_past_their_deadline_and_their_load() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            tx,
            load: AtomicU32::new(2),
            alive: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        };
        let now = Instant::now();
        let mut st = state();
        for (id, deadline) in [(1, now - Duration::from_millis(1)), (2, now + SWEEP_EVERY)] {
            st.queue.push_back(Outbound {
                msg: request(id),
                reply: None,
                deadline,
                slot: None,
                charge: None,
            });
        }
        st.sweep(now, &handle);
        assert_eq!(st.queue.len(), 1);
        assert_eq!(st.queue[0].msg.request_id(), 2);
        assert_eq!(handle.load(), 1);
    }

    /// A connection handle with `load` requests in flight (no task behind it).
    fn conn(load: u32, alive: bool) -> Arc<ConnHandle> {
        let (tx, _rx) = mpsc::unbounded_channel();
        Arc::new(ConnHandle {
            tx,
            load: AtomicU32::new(load),
            alive: AtomicBool::new(alive),
            accepting: AtomicBool::new(true),
        })
    }

    fn picked<'a>(conns: &'a [Arc<ConnHandle>], choice: Choice<'a>) -> Option<usize> {
        match choice {
            Choice::Fit(c) => conns.iter().position(|x| Arc::ptr_eq(x, c)),
            Choice::Full { .. } => None,
        }
    }

    #[test]
    fn pick_is_first_fit_below_the_spread_threshold() {
        let t = MUX_SPREAD_THRESHOLD;
        // Not the least loaded (index 2): the first with room, so one pipelined client
        // stays on one connection and its requests batch into few writes.
        let conns = [conn(t, true), conn(t - 1, true), conn(0, true)];
        assert_eq!(picked(&conns, Pool::choose(&conns, t)), Some(1));
        let conns = [conn(3, true), conn(0, true)];
        assert_eq!(picked(&conns, Pool::choose(&conns, t)), Some(0));
    }

    #[test]
    fn dead_or_draining_connections_are_skipped() {
        let t = MUX_SPREAD_THRESHOLD;
        let draining = conn(0, true);
        draining.accepting.store(false, Ordering::Relaxed);
        let conns = [conn(0, false), draining, conn(5, true)];
        assert_eq!(picked(&conns, Pool::choose(&conns, t)), Some(2));
    }

    #[test]
    fn when_every_connection_is_full_the_least_loaded_is_offered() {
        let t = MUX_SPREAD_THRESHOLD;
        let conns = [
            conn(t + 9, true),
            conn(t + 2, true),
            conn(0, false),
            conn(t, true),
        ];
        match Pool::choose(&conns, t) {
            Choice::Full { least } => {
                let least = least.map(|c| conns.iter().position(|x| Arc::ptr_eq(x, c)));
                assert_eq!(least, Some(Some(3)));
            }
            Choice::Fit(_) => panic!("no connection has room"),
        }
        match Pool::choose(&[], t) {
            Choice::Full { least } => assert!(least.is_none()),
            Choice::Fit(_) => panic!("an empty pool has no connection"),
        }
        // Codecs that cannot multiplex use threshold 1: only an idle connection fits.
        let conns = [conn(1, true), conn(0, true)];
        assert_eq!(picked(&conns, Pool::choose(&conns, 1)), Some(1));
    }

    #[test]
    fn a_send_counts_load_and_a_failed_send_gives_the_request_back() {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnHandle {
            tx,
            load: AtomicU32::new(0),
            alive: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        };
        let out = |id: u64| Outbound {
            msg: Message::new(MessageKind::Request, id, bytes::Bytes::new()),
            reply: None,
            deadline: Instant::now(),
            slot: None,
            charge: None,
        };
        assert!(handle.send(out(1)).is_ok());
        assert_eq!(handle.load.load(Ordering::Relaxed), 1);
        drop(rx);
        let back = handle
            .send(out(2))
            .expect_err("the connection task is gone");
        assert_eq!(back.msg.request_id(), 2);
        assert_eq!(
            handle.load.load(Ordering::Relaxed),
            1,
            "the failed send is not counted"
        );
    }
}
