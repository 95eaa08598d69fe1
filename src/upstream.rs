//! Upstream connection pools and connections.
//!
//! Each upstream connection is one task that owns its socket, its codec and its table of
//! pending requests, so the request path takes no lock: requests arrive over a channel,
//! get a fresh connection-local request id (multiplexing many downstream connections over
//! few upstream ones), and responses go back to the downstream connection's channel with
//! the token it gave. Codecs that cannot multiplex get one request per connection at a
//! time.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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

use crate::cluster::{Endpoint, PendingSlot};
use crate::observe::metrics::ClusterMetrics;

/// Requests in flight on one multiplexed connection before the pool opens another.
const MUX_SPREAD_THRESHOLD: u32 = 64;
/// Read buffer reservation.
const READ_CHUNK: usize = 64 * 1024;
/// Stop taking new requests while this much output waits for a backend that does not read.
const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;
/// How often expired pending entries are swept.
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
    Response { token: u64, msg: Message },
    /// The request failed. `unsent` carries it back when it never reached the backend,
    /// so it may be retried elsewhere.
    Failed {
        token: u64,
        unsent: Option<Message>,
        reason: &'static str,
    },
}

/// Where to deliver the response of a request.
pub(crate) struct ReplyTo {
    pub(crate) tx: mpsc::UnboundedSender<DownstreamEvent>,
    pub(crate) token: u64,
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
}

impl Outbound {
    fn fail(self, sent: bool, reason: &'static str) {
        if let Some(reply) = self.reply {
            let unsent = if sent { None } else { Some(self.msg) };
            let _ = reply.tx.send(DownstreamEvent::Failed {
                token: reply.token,
                unsent,
                reason,
            });
        }
    }
}

/// What [`Pool::choose`] found.
enum Choice<'a> {
    /// A usable connection with room.
    Fit(&'a Arc<ConnHandle>),
    /// Every usable connection is at the threshold.
    Full {
        least: Option<&'a Arc<ConnHandle>>,
        usable: usize,
    },
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
    connect_timeout_ms: AtomicU64,
    max_connections: AtomicUsize,
    conns: ArcSwap<Vec<Arc<ConnHandle>>>,
    create_lock: Mutex<()>,
    metrics: ClusterMetrics,
}

impl Pool {
    pub(crate) fn new(
        key: PoolKey,
        addr: SocketAddr,
        protocol: Arc<Protocol>,
        connect_timeout: Duration,
        max_connections: usize,
        metrics: ClusterMetrics,
    ) -> Self {
        Pool {
            key,
            addr,
            protocol,
            connect_timeout_ms: AtomicU64::new(connect_timeout.as_millis() as u64),
            max_connections: AtomicUsize::new(max_connections.max(1)),
            conns: ArcSwap::from_pointee(Vec::new()),
            create_lock: Mutex::new(()),
            metrics,
        }
    }

    pub(crate) fn reconfigure(&self, connect_timeout: Duration, max_connections: usize) {
        self.connect_timeout_ms
            .store(connect_timeout.as_millis() as u64, Ordering::Relaxed);
        self.max_connections
            .store(max_connections.max(1), Ordering::Relaxed);
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
    /// the least-loaded usable connection and how many are usable, for when all are full.
    fn choose(conns: &[Arc<ConnHandle>], threshold: u32) -> Choice<'_> {
        let mut least: Option<&Arc<ConnHandle>> = None;
        let mut usable = 0;
        for c in conns.iter().filter(|c| c.usable()) {
            let load = c.load.load(Ordering::Relaxed);
            if load < threshold {
                return Choice::Fit(c);
            }
            usable += 1;
            if least.is_none_or(|b| load < b.load.load(Ordering::Relaxed)) {
                least = Some(c);
            }
        }
        Choice::Full { least, usable }
    }

    /// A connection for the next request: the first one with room, or a new one when
    /// all are busy and the pool is below `max_connections`, or else the least loaded.
    pub(crate) fn pick(&self, endpoint: &Arc<Endpoint>) -> Arc<ConnHandle> {
        let threshold = if self.protocol.caps.multiplexing {
            MUX_SPREAD_THRESHOLD
        } else {
            1
        };
        let max = self.max_connections.load(Ordering::Relaxed);
        // A connection to use without opening one: one with room, or the least loaded
        // when the pool is full.
        let reuse = |conns: &[Arc<ConnHandle>]| match Self::choose(conns, threshold) {
            Choice::Fit(c) => Some(c.clone()),
            Choice::Full {
                least: Some(c),
                usable,
            } if usable >= max => Some(c.clone()),
            Choice::Full { .. } => None,
        };
        if let Some(c) = reuse(&self.conns.load()) {
            return c;
        }
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.conns.load_full();
        if let Some(c) = reuse(&current) {
            return c;
        }
        let handle = self.spawn_connection(endpoint);
        let mut next: Vec<Arc<ConnHandle>> = current
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .cloned()
            .collect();
        next.push(handle.clone());
        self.conns.store(Arc::new(next));
        handle
    }

    fn spawn_connection(&self, endpoint: &Arc<Endpoint>) -> Arc<ConnHandle> {
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
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed)),
            endpoint: Arc::downgrade(endpoint),
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
}

struct UpstreamConnection {
    handle: Arc<ConnHandle>,
    rx: mpsc::UnboundedReceiver<Outbound>,
    addr: SocketAddr,
    protocol: Arc<Protocol>,
    wire: WireFormat,
    connect_timeout: Duration,
    endpoint: Weak<Endpoint>,
    metrics: ClusterMetrics,
}

impl UpstreamConnection {
    async fn run(mut self) {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
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
        let mut pending: PendingMap =
            HashMap::with_capacity_and_hasher(64, ahash::RandomState::new());
        let reason = self.serve(stream, codec, &mut pending).await;
        self.metrics.upstream_connections_active.dec();
        self.handle.alive.store(false, Ordering::Relaxed);
        tracing::debug!(addr = %self.addr, reason, pending = pending.len(), "upstream connection closed");
        for (_, p) in pending.drain() {
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
            if let Some(reply) = p.reply {
                let _ = reply.tx.send(DownstreamEvent::Failed {
                    token: reply.token,
                    unsent: None,
                    reason: "upstream connection closed before replying",
                });
            }
        }
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            out.fail(false, "upstream connection closed");
        }
    }

    fn connect_failed(mut self, why: &str) {
        tracing::debug!(addr = %self.addr, why, "upstream connect failed");
        self.handle.alive.store(false, Ordering::Relaxed);
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
        pending: &mut PendingMap,
    ) -> &'static str {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut next_id: u32 = 0;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let multiplexing = self.protocol.caps.multiplexing;
        let mut rx_open = true;
        loop {
            if !self.handle.accepting.load(Ordering::Relaxed)
                && pending.is_empty()
                && wbuf.is_empty()
            {
                // The backend said go away and everything it owed us has arrived.
                self.rx.close();
                while let Ok(out) = self.rx.try_recv() {
                    self.handle.load.fetch_sub(1, Ordering::Relaxed);
                    out.fail(false, "upstream connection is going away");
                }
                return "drained by upstream";
            }
            let may_take =
                rx_open && (multiplexing || pending.is_empty()) && wbuf.len() < MAX_PENDING_OUTPUT;
            tokio::select! {
                biased;
                ready = stream.readable() => {
                    if let Err(e) = ready { tracing::debug!(error = %e, "upstream readable"); return "read error"; }
                    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 { rbuf.reserve(READ_CHUNK); }
                    match stream.try_read_buf(&mut rbuf) {
                        Ok(0) => return "closed by upstream",
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return "read error",
                    }
                    loop {
                        match codec.decode(&mut rbuf) {
                            Ok(Some(msg)) => self.on_message(msg, pending, &mut *codec, &mut wbuf),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(addr = %self.addr, error = %e, "bad frame from upstream");
                                return "decode error";
                            }
                        }
                    }
                }
                out = self.rx.recv(), if may_take => {
                    let Some(out) = out else { rx_open = false; if pending.is_empty() { return "pool closed"; } continue };
                    self.enqueue(out, pending, &mut next_id, &mut *codec, &mut wbuf);
                    // Batch whatever else is queued into the same write.
                    while multiplexing || pending.is_empty() {
                        match self.rx.try_recv() {
                            Ok(out) => self.enqueue(out, pending, &mut next_id, &mut *codec, &mut wbuf),
                            Err(_) => break,
                        }
                        if wbuf.len() > 256 * 1024 { break; }
                    }
                }
                ready = stream.writable(), if !wbuf.is_empty() => {
                    if ready.is_err() { return "write error"; }
                    match stream.try_write(&wbuf) {
                        Ok(n) => bytes::Buf::advance(&mut wbuf, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return "write error",
                    }
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let before = pending.len();
                    pending.retain(|_, p| p.deadline + SWEEP_GRACE > now);
                    let swept = before - pending.len();
                    if swept > 0 { self.handle.load.fetch_sub(swept as u32, Ordering::Relaxed); }
                    if !rx_open && pending.is_empty() { return "pool closed"; }
                }
            }
        }
    }

    fn enqueue(
        &mut self,
        mut out: Outbound,
        pending: &mut PendingMap,
        next_id: &mut u32,
        codec: &mut dyn Codec,
        wbuf: &mut BytesMut,
    ) {
        let two_way = out.msg.kind() == MessageKind::Request;
        let id = loop {
            *next_id = next_id.wrapping_add(1) & 0x7fff_ffff;
            if !pending.contains_key(&u64::from(*next_id)) {
                break u64::from(*next_id);
            }
        };
        out.msg.set_request_id(id);
        if let Err(e) = codec.encode(&out.msg, wbuf) {
            tracing::warn!(error = %e, "cannot encode request for upstream");
            self.handle.load.fetch_sub(1, Ordering::Relaxed);
            out.fail(true, "request could not be encoded for upstream");
            return;
        }
        if two_way {
            pending.insert(
                id,
                Pending {
                    reply: out.reply,
                    deadline: out.deadline,
                    _slot: out.slot,
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
