//! Upstream connection pools and connections.
//!
//! Each upstream connection has one task that reads its socket, and a shared state
//! ([`ConnHandle`]) that client connections on the same worker write into directly: a
//! request gets a fresh connection-local request id (multiplexing many client
//! connections over few upstream ones) and is encoded straight into the connection's
//! write buffer; a response is decoded by the connection's task and handed to its client
//! connection by a direct call ([`crate::delivery`]). No channel, no copy of the message
//! between tasks. Codecs that cannot multiplex get one request per connection at a time.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use meta_protocol::{
    Codec, CodecCapabilities, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, Message, MessageKind, WireFormat,
};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::budget::BudgetCharge;
use crate::buffer_pool;
use crate::clock::Stamp;
use crate::delivery::{flush_all, flush_at_turn_end, Failure, ReplyTo, ResponseSink};
use crate::endpoint_link::{ConnectionSettings, EndpointLink};
use crate::id_table::IdTable;
use crate::observe::metrics::ClusterMetrics;
use crate::pending::PendingSlot;
use crate::short_lock::{ShortGuard, ShortLock};
use crate::task_wake::{poll_timer, TaskWake};
use crate::turn_end::{self, AtTurnEnd};
use crate::unwritten::Unwritten;

/// Requests in flight on one multiplexed connection before the pool opens another.
const MUX_SPREAD_THRESHOLD: u32 = 64;
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
/// Why a queued request was not written: its deadline had passed.
const EXPIRED_UNWRITTEN: &str = "request expired before it was written";

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
            .new_codec(&CodecContext::downstream(self.max_frame_size).with_lazy_metadata())
    }

    /// A codec for a backend connection carrying requests in `wire` format.
    pub(crate) fn upstream_codec(&self, wire: WireFormat) -> Result<Box<dyn Codec>, CodecError> {
        self.configured
            .new_codec(&CodecContext::upstream(self.max_frame_size, wire).with_lazy_metadata())
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

/// What goes with a request to an upstream connection besides the message itself.
pub(crate) struct Envelope {
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

impl Envelope {
    /// The failure to deliver for request `msg`, if anyone waits for it. `sent` says it
    /// may have reached the backend (so it is not handed back for a retry).
    fn failure(
        self,
        msg: Option<Message>,
        sent: bool,
        stale: bool,
        reason: &'static str,
    ) -> Option<(ReplyTo, Failure)> {
        let reply = self.reply?;
        let unsent = if sent { None } else { msg };
        Some((
            reply,
            Failure {
                unsent,
                reason,
                stale,
                expired: false,
            },
        ))
    }
}

/// A request waiting in an upstream connection's queue.
struct Queued {
    msg: Message,
    env: Envelope,
}

/// A request a connection did not take, with the reason. The message itself stays
/// with the caller (see [`ConnHandle::send`]).
pub(crate) struct Refused {
    pub(crate) env: Envelope,
    pub(crate) reason: &'static str,
}

/// What [`Pool::choose`] found.
enum Choice<'a> {
    /// A usable connection with room.
    Fit(&'a Arc<ConnHandle>),
    /// Every usable connection is at the threshold.
    Full { least: Option<&'a Arc<ConnHandle>> },
}

/// One upstream connection as everyone sees it: its task, the pool, and the client
/// connections that send on it.
///
/// Client connections encode their requests straight into [`ConnInner::wbuf`] (the
/// upstream request id assigned there, the request's mutations applied by the codec).
/// The first one to do so since the last write lists the connection for the end of
/// the worker's turn ([`crate::turn_end`]), where the worker writes the buffer itself
/// once every task that was ready has run; on a runtime without that hook it wakes the
/// connection's task, which writes when it runs, after every client that became ready
/// at the same time. Either way, one `write` for all of them (writing per client
/// instead was measured at one `write` per request with 16 or 256 clients at pipeline
/// 1, against 0.27 and 0.05 this way). The mutex is only ever taken by the worker
/// thread that owns the connection (per-core threading; with work stealing it may be
/// contended) and is never held across an `.await` or while calling a client.
pub(crate) struct ConnHandle {
    load: LoadCount,
    alive: AtomicBool,
    accepting: AtomicBool,
    multiplexing: bool,
    inner: ShortLock<ConnInner>,
    wake: TaskWake,
}

/// Requests in flight on one upstream connection (its load, for the pool's pick). Read
/// anywhere; changed only with the connection's lock held, which the `&ConnInner`
/// argument proves, or once the connection is closed: so a change is a load and a
/// store, not an atomic read-modify-write (about 20 cycles each, twice per request).
#[derive(Default)]
struct LoadCount(AtomicU32);

impl LoadCount {
    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, _locked: &ConnInner, n: u32) {
        self.0.store(self.get().wrapping_add(n), Ordering::Relaxed);
    }

    fn sub(&self, _locked: &ConnInner, n: u32) {
        self.0.store(self.get().wrapping_sub(n), Ordering::Relaxed);
    }

    /// Back to 0 once the connection is closed (`closed` set under the lock, so no
    /// request is counted any more).
    fn reset_closed(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The connected part of an upstream connection.
struct Io {
    stream: Arc<TcpStream>,
    codec: Box<dyn Codec>,
}

/// What one upstream connection's users share under its mutex.
struct ConnInner {
    /// Set once connected; taken away when the connection ends.
    io: Option<Io>,
    /// Encoded requests not yet written.
    wbuf: BytesMut,
    st: ConnState,
    /// The task has ended: nothing more is taken.
    closed: bool,
    /// The task has been woken, or the connection listed for the end of the worker's
    /// turn, to write what was encoded since it last ran.
    write_scheduled: bool,
    /// In this worker's end-of-turn list ([`crate::turn_end`]).
    listed: bool,
}

impl ConnHandle {
    fn new(multiplexing: bool) -> Self {
        ConnHandle {
            load: LoadCount::default(),
            alive: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
            multiplexing,
            inner: ShortLock::new(ConnInner {
                io: None,
                wbuf: BytesMut::new(),
                st: ConnState::new(),
                closed: false,
                write_scheduled: false,
                listed: false,
            }),
            wake: TaskWake::default(),
        }
    }

    fn usable(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && self.accepting.load(Ordering::Relaxed)
    }

    /// Requests queued or in flight on this connection.
    pub(crate) fn load(&self) -> u32 {
        self.load.get()
    }

    fn lock(&self) -> ShortGuard<'_, ConnInner> {
        self.inner.lock()
    }

    /// Takes the request in `msg`: encodes it into the write buffer at once, where it
    /// lies, when the connection is up and has room, or queues it; the worker writes it
    /// at the end of its turn, or the connection's task does. The message is moved out
    /// of `msg` only where it must be kept (a two-way request until it is written, for a
    /// retry; a queued one); when the connection refuses it, it is still in `msg` for the
    /// caller to retry.
    ///
    /// `now` is the caller's current time (when the request was read), against which the
    /// envelope's deadline is checked.
    pub(crate) fn send(
        self: &Arc<Self>,
        msg: &mut Option<Message>,
        env: Envelope,
        now: Instant,
    ) -> Result<(), Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused {
                env,
                reason: "upstream connection unavailable",
            });
        }
        self.load.add(&inner, 1);
        let direct = inner.io.is_some()
            && inner.st.queue.is_empty()
            && self.accepting.load(Ordering::Relaxed)
            && inner.has_room(self.multiplexing);
        if !direct {
            let Some(msg) = msg.take() else {
                self.load.sub(&inner, 1);
                return Err(Refused {
                    env,
                    reason: "no request to send",
                });
            };
            inner.st.queue.push_back(Queued { msg, env });
            drop(inner);
            self.wake.wake();
            return Ok(());
        }
        match inner.encode(msg, env, now) {
            Ok(two_way) => {
                if !two_way {
                    self.load.sub(&inner, 1);
                }
                if !std::mem::replace(&mut inner.write_scheduled, true) {
                    // Written at the end of the worker's turn (see `at_turn_end`) where
                    // the worker has that hook; by the connection's task elsewhere.
                    if inner.listed || turn_end::defer(|| self.clone()) {
                        inner.listed = true;
                    } else {
                        drop(inner);
                        self.wake.wake();
                    }
                }
                Ok(())
            }
            Err(refused) => {
                self.load.sub(&inner, 1);
                Err(refused)
            }
        }
    }
}

impl AtTurnEnd for ConnHandle {
    /// Writes what the clients encoded during the worker's turn, with one `write`, from
    /// the worker thread and without the connection's task. The task is woken instead
    /// when the socket has input waiting (it reads first, as its own loop does, so that
    /// a backend that closed after answering is seen before requests are written into a
    /// dead socket) and when the write failed or left bytes (it waits for the socket).
    fn at_turn_end(&self) {
        let mut inner = self.lock();
        inner.listed = false;
        inner.write_scheduled = false;
        let Some(io) = &inner.io else { return };
        if inner.wbuf.is_empty() {
            return;
        }
        let input_waiting = io.stream.try_io(Interest::READABLE, || Ok(())).is_ok();
        let written = !input_waiting && inner.write_once().is_ok() && inner.wbuf.is_empty();
        if !written {
            inner.write_scheduled = true;
            drop(inner);
            self.wake.wake();
        }
    }
}

impl ConnInner {
    /// Encodes the request in `slot` with a fresh connection-local request id, reading
    /// it where it lies. Returns whether it is a two-way request (now pending; moved out
    /// of `slot` when it is kept for a retry), or the refusal (the request stays in
    /// `slot`).
    fn encode(
        &mut self,
        slot: &mut Option<Message>,
        env: Envelope,
        now: Instant,
    ) -> Result<bool, Refused> {
        if env.deadline <= now {
            // The client already got its timeout reply; never write it late.
            return Err(Refused {
                env,
                reason: EXPIRED_UNWRITTEN,
            });
        }
        let (Some(io), Some(msg)) = (self.io.as_mut(), slot.as_mut()) else {
            return Err(Refused {
                env,
                reason: "upstream connection unavailable",
            });
        };
        let st = &mut self.st;
        let two_way = msg.kind() == MessageKind::Request;
        let id = st.pending.next_free_id();
        msg.set_request_id(u64::from(id));
        let need = msg.frame().len() + buffer_pool::MUTATION_ROOM;
        if !buffer_pool::ready_for_write(&mut self.wbuf, need) {
            // A batch the request would take past a pooled buffer: written first.
            if let Ok(n @ 1..) = crate::socket_io::write_once(&io.stream, &mut self.wbuf) {
                st.wrote(n);
            }
            let _ = buffer_pool::ready_for_write(&mut self.wbuf, need);
        }
        let before = self.wbuf.len();
        if let Err(e) = io.codec.encode(msg, &mut self.wbuf) {
            crate::observe::rate_limited!(tracing::Level::WARN, error = %e, "cannot encode request for upstream");
            self.wbuf.truncate(before);
            return Err(Refused {
                env,
                reason: "request could not be encoded for upstream",
            });
        }
        st.encoded += (self.wbuf.len() - before) as u64;
        if two_way {
            if env.reply.is_some() && slot.is_some() {
                st.unwritten.push(st.encoded, u64::from(id), slot);
            }
            st.pending.insert(
                id,
                Pending {
                    reply: env.reply,
                    deadline: env.deadline,
                    _slot: env.slot,
                    _charge: env.charge,
                },
            );
        }
        Ok(two_way)
    }

    /// One `write` of the write buffer; requests written in full are sent.
    fn write_once(&mut self) -> io::Result<()> {
        let Some(io) = &self.io else { return Ok(()) };
        let n = crate::socket_io::write_once(&io.stream, &mut self.wbuf)?;
        if n > 0 {
            self.st.wrote(n);
        }
        Ok(())
    }

    /// Whether another request may be encoded now: the write buffer is below
    /// [`WRITE_BATCH`], and a connection that cannot multiplex has nothing in flight.
    fn has_room(&self, multiplexing: bool) -> bool {
        self.wbuf.len() < WRITE_BATCH && (multiplexing || self.st.pending.is_empty())
    }

    /// Encodes queued requests while the write buffer has room; the ones that cannot
    /// go are added to `failed`. Returns how many requests left the load count.
    fn drain_queue(
        &mut self,
        accepting: bool,
        multiplexing: bool,
        failed: &mut Vec<(ReplyTo, Failure)>,
    ) -> u32 {
        let mut unloaded = 0;
        if self.io.is_none() || !accepting || self.st.queue.is_empty() {
            return 0;
        }
        let now = Instant::now();
        while self.has_room(multiplexing) {
            let Some(Queued { msg, env }) = self.st.queue.pop_front() else {
                break;
            };
            let mut slot = Some(msg);
            match self.encode(&mut slot, env, now) {
                Ok(true) => {}
                Ok(false) => unloaded += 1,
                Err(Refused { env, reason }) if reason == EXPIRED_UNWRITTEN => {
                    unloaded += 1;
                    failed.extend(env.reply.map(|reply| (reply, Failure::expired())));
                }
                Err(Refused { env, reason }) => {
                    unloaded += 1;
                    // Not written, and unencodable: no retry.
                    failed.extend(env.failure(None, true, false, reason));
                }
            }
        }
        unloaded
    }
}

/// Whether a batch of `responses` for `clients` client connections is worth holding
/// back until the other tasks of the same wake-up ran (see the read branch of
/// `UpstreamConnection::run`), where its clients are flushed after the read rather than
/// at the end of the worker's turn: on a runtime without that hook, or after a read of
/// [`FLUSH_NOW_BYTES`] or more. A yield costs a pass through the scheduler and the I/O
/// driver, so only a large batch of pipelined answers (at least 16, two or more per
/// client on average) pays for it: there other upstream connections are likely to hold
/// answers for the same clients. Measured in docs/PERFORMANCE.md: yielding after every
/// batch won at 128 B and lost up to a third of the throughput at 4 KiB, where a read
/// holds at most eight answers.
fn worth_coalescing(responses: usize, clients: usize) -> bool {
    responses >= 2 * clients.max(8)
}

/// A read of at least this many bytes of responses is flushed to its clients at once
/// rather than at the end of the worker's turn: large answers are forwarded as they
/// come (the client can work on them while the rest is read), as an L4 proxy would.
/// Below it (a few pipelined small answers) one write per client per turn saves more.
const FLUSH_NOW_BYTES: usize = 16 * 1024;

/// What woke an upstream connection's task (see the wait in `UpstreamConnection::serve`).
enum Wait {
    /// The socket is readable (or failed).
    Readable(io::Result<()>),
    /// A client or the end of the worker's turn asked for a pass ([`TaskWake`]).
    Woken,
    /// The socket is writable (false: it failed).
    Writable(bool),
    /// The periodic tick: sweeps, write stalls, idle close, heartbeats.
    Tick,
}

/// Connections to one endpoint for one [`PoolKey`].
pub(crate) struct Pool {
    pub(crate) key: PoolKey,
    addr: SocketAddr,
    protocol: Arc<Protocol>,
    /// Locked only to pick, open, publish or count, never across an `.await`. (An
    /// uncontended lock is cheaper per request than an `ArcSwap` load; other workers
    /// take it only when this endpoint is at `max_connections`.)
    conns: ShortLock<Vec<Arc<ConnHandle>>>,
    /// Index in `conns` of the connection [`Pool::choose`] found last, tried first next
    /// time (see there).
    last_fit: AtomicUsize,
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
            conns: ShortLock::new(Vec::new()),
            last_fit: AtomicUsize::new(0),
            metrics,
        }
    }

    fn conns(&self) -> ShortGuard<'_, Vec<Arc<ConnHandle>>> {
        self.conns.lock()
    }

    /// The least loaded usable connection, if any.
    pub(crate) fn least_loaded(&self) -> Option<Arc<ConnHandle>> {
        self.conns()
            .iter()
            .filter(|c| c.usable())
            .min_by_key(|c| c.load())
            .cloned()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.conns()
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .count()
    }

    /// Requests queued or in flight on this pool's connections.
    pub(crate) fn load(&self) -> u64 {
        self.conns().iter().map(|c| u64::from(c.load())).sum()
    }

    /// First fit: the first usable connection below `threshold` in-flight requests, so
    /// traffic concentrates on few connections and batches into few writes (spreading a
    /// pipelined client over many idle connections costs a syscall per request). Also
    /// the least-loaded usable connection, for when all are full.
    ///
    /// The connection found last (`last_fit`) is tried first: while it has room it is
    /// the answer, without a scan. Under heavy load most connections are full, and the
    /// scan from the first would pass all of them for every request (about 360
    /// instructions per request with 58 connections to one backend at 256 clients × 16
    /// in flight); with the shortcut it runs once per batch of answers instead. Once
    /// that connection is full the scan starts from the first again, so connections
    /// beyond what the load needs still go idle and close.
    fn choose<'a>(
        conns: &'a [Arc<ConnHandle>],
        threshold: u32,
        last_fit: &AtomicUsize,
    ) -> Choice<'a> {
        if let Some(c) = conns.get(last_fit.load(Ordering::Relaxed)) {
            if c.usable() && c.load.get() < threshold {
                return Choice::Fit(c);
            }
        }
        let mut least: Option<&Arc<ConnHandle>> = None;
        for (i, c) in conns.iter().enumerate().filter(|(_, c)| c.usable()) {
            let load = c.load.get();
            if load < threshold {
                last_fit.store(i, Ordering::Relaxed);
                return Choice::Fit(c);
            }
            if least.is_none_or(|b| load < b.load.get()) {
                least = Some(c);
            }
        }
        Choice::Full { least }
    }

    /// A connection to use without opening one: one with room ([`Pool::choose`]: the
    /// last one found while it has room, else the first), or the least loaded when
    /// `endpoint` may not open another.
    fn reusable<'a>(
        &self,
        conns: &'a [Arc<ConnHandle>],
        threshold: u32,
        endpoint: &EndpointLink,
    ) -> Option<&'a Arc<ConnHandle>> {
        match Self::choose(conns, threshold, &self.last_fit) {
            Choice::Fit(c) => Some(c),
            Choice::Full { least: Some(c) } if !endpoint.may_open() => Some(c),
            Choice::Full { .. } => None,
        }
    }

    /// Calls `f` with the connection this pool would reuse ([`Pool::reusable`]), under
    /// the pool's lock (lent, not counted); gives `f` back when a connection would have
    /// to be opened ([`Pool::open_or_reuse`]). `f` may lock the connection (lock order:
    /// pool, then connection; nothing that holds a connection's lock takes a pool's).
    pub(crate) fn with_reused<R, F: FnOnce(Option<&Arc<ConnHandle>>) -> R>(
        &self,
        endpoint: &EndpointLink,
        f: F,
    ) -> Result<R, F> {
        let conns = self.conns();
        match self.reusable(&conns, self.spread_threshold(), endpoint) {
            Some(c) => Ok(f(Some(c))),
            None => Err(f),
        }
    }

    /// In-flight requests above which the next request goes to another connection.
    fn spread_threshold(&self) -> u32 {
        if self.protocol.caps.multiplexing {
            MUX_SPREAD_THRESHOLD
        } else {
            1
        }
    }

    /// A connection for the next request once [`Pool::with_reused`] found none to
    /// reuse: a new one when the endpoint is below `max_connections` (counted over
    /// every worker's pool), or else, should another worker have opened the last one
    /// meanwhile, the first with room or the least loaded. `None` when this pool has no
    /// usable connection and the endpoint may not open another.
    pub(crate) fn open_or_reuse(&self, endpoint: &Arc<EndpointLink>) -> Option<Arc<ConnHandle>> {
        let threshold = self.spread_threshold();
        // Lock order: the endpoint's opening lock, then this pool's list. Checked again
        // under both: the state may have changed since `with_reused` looked.
        let _guard = endpoint.opening();
        let mut conns = self.conns();
        if let Some(c) = self.reusable(&conns, threshold, endpoint) {
            return Some(c.clone());
        }
        let Some(open) = endpoint.reserve_connection() else {
            return match Self::choose(&conns, threshold, &self.last_fit) {
                Choice::Fit(c) => Some(c.clone()),
                Choice::Full { least, .. } => least.cloned(),
            };
        };
        let handle = self.spawn_connection(endpoint, open);
        conns.retain(|c| c.alive.load(Ordering::Relaxed));
        conns.push(handle.clone());
        Some(handle)
    }

    fn spawn_connection(
        &self,
        endpoint: &Arc<EndpointLink>,
        open: Arc<AtomicUsize>,
    ) -> Arc<ConnHandle> {
        let handle = Arc::new(ConnHandle::new(self.protocol.caps.multiplexing));
        let conn = UpstreamConnection {
            handle: handle.clone(),
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

struct Pending {
    reply: Option<ReplyTo>,
    deadline: Instant,
    _slot: Option<PendingSlot>,
    _charge: Option<BudgetCharge>,
}

/// What one upstream connection holds besides its socket and codec.
struct ConnState {
    /// Requests written (or being written), by connection-local id.
    pending: IdTable<Pending>,
    /// Requests taken, not yet encoded (see [`WRITE_BATCH`]).
    queue: VecDeque<Queued>,
    /// Two-way requests encoded but not completely written: (end offset in the
    /// output stream, id, request), oldest first. Kept for a retry should the
    /// connection go away before they are written.
    unwritten: Unwritten,
    /// Bytes encoded into / written from the output stream so far.
    encoded: u64,
    written: u64,
    /// Responses received on this connection.
    answered: u64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            pending: IdTable::default(),
            queue: VecDeque::new(),
            unwritten: Unwritten::default(),
            encoded: 0,
            written: 0,
            answered: 0,
        }
    }

    /// Records `n` more bytes written; requests written in full are sent (and dropped
    /// where they are).
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.unwritten.written_up_to(self.written);
    }

    /// Frees the tables' room; called when nothing is in flight, so they are empty and
    /// keep no allocation. An entry of `queue` or `unwritten` holds a whole request
    /// (about 500 bytes): keeping even 16 of each per idle connection came to 15 KiB
    /// per connection, 2 MiB over the 120 or so a load leaves in the pools. The next
    /// burst grows them again in a few steps.
    fn shrink(&mut self) {
        self.pending.free_when_empty();
        if self.queue.capacity() > 0 {
            self.queue.shrink_to(0);
        }
        self.unwritten.free_when_empty();
    }

    /// Drops queued requests whose deadline passed (never written late) and pending
    /// entries long past theirs; returns how many, and adds the clients waiting for
    /// them to `expired`, to be told once the connection's lock is released. A client
    /// has mostly timed them out already (its timer fires at the deadline, the sweep at
    /// most a tick later); the others get their `timeout` reply from this, so no
    /// request ends without one.
    fn sweep(&mut self, now: Instant, expired: &mut Vec<ReplyTo>) -> u32 {
        let before = self.queue.len() + self.pending.len();
        self.queue.retain_mut(|q| {
            let keep = q.env.deadline > now;
            if !keep {
                expired.extend(q.env.reply.take());
            }
            keep
        });
        self.pending.retain_or(
            |p| p.deadline + SWEEP_GRACE > now,
            |p| expired.extend(p.reply),
        );
        (before - self.queue.len() - self.pending.len()) as u32
    }
}

/// One count of an endpoint's open connections, given back when the connection ends.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands requests that never left a connection's queue back to their clients for a
/// retry (`stale`: one that does not count, see [`Failure`]).
fn fail_queued(
    queue: VecDeque<Queued>,
    stale: bool,
    reason: &'static str,
    sinks: &mut Vec<Arc<dyn ResponseSink>>,
) {
    for Queued { msg, env } in queue {
        if let Some((reply, failure)) = env.failure(Some(msg), false, stale, reason) {
            reply.fail(failure, sinks);
        }
    }
}

/// Tells the clients of requests whose deadline passed upstream (see
/// [`ConnState::sweep`]).
fn fail_expired(expired: Vec<ReplyTo>) {
    let mut sinks = Vec::new();
    for reply in expired {
        reply.fail(Failure::expired(), &mut sinks);
    }
    flush_all(&mut sinks);
}

struct UpstreamConnection {
    /// Counts against the endpoint's `max_connections`; given back as soon as the
    /// connection is gone, before its requests are handed back for retries.
    open: Option<OpenConnection>,
    handle: Arc<ConnHandle>,
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
        let stream = Arc::new(stream);
        self.handle.lock().io = Some(Io {
            stream: stream.clone(),
            codec,
        });
        let reason = self.serve(&stream).await;
        self.metrics.upstream_connections_active.dec();
        self.handle.alive.store(false, Ordering::Relaxed);
        drop(self.open.take());
        // Everything owed goes back to its clients, after the lock is released.
        let mut inner = self.handle.lock();
        inner.closed = true;
        inner.io = None;
        let st = std::mem::replace(&mut inner.st, ConnState::new());
        inner.wbuf = BytesMut::new();
        drop(inner);
        drop(stream);
        self.fail_all(st, reason);
    }

    /// Hands every request of a closed connection back to its client: the ones never
    /// written for a retry, the others as failed.
    fn fail_all(&self, mut st: ConnState, reason: &'static str) {
        tracing::debug!(addr = %self.addr, reason, pending = st.pending.len(), "upstream connection closed");
        // Requests never written go back for a retry. When the connection had served
        // requests (the backend closed it between requests) or the proxy retired it
        // (idle, go-away), the retry is on the house.
        let stale = st.answered > 0 || reason == DRAINED;
        let mut sinks = Vec::new();
        while let Some((id, msg)) = st.unwritten.pop_oldest() {
            if let Some(p) = st.pending.remove(id) {
                if let Some(reply) = p.reply {
                    let failure = Failure {
                        unsent: msg,
                        reason,
                        stale,
                        expired: false,
                    };
                    reply.fail(failure, &mut sinks);
                }
            }
        }
        for p in st.pending.drain() {
            if let Some(reply) = p.reply {
                let failure = Failure {
                    unsent: None,
                    reason: "upstream connection closed before replying",
                    stale: false,
                    expired: false,
                };
                reply.fail(failure, &mut sinks);
            }
        }
        fail_queued(st.queue, stale, "upstream connection closed", &mut sinks);
        self.handle.load.reset_closed();
        flush_all(&mut sinks);
    }

    fn connect_failed(mut self, why: &str) {
        tracing::debug!(addr = %self.addr, why, "upstream connect failed");
        self.handle.alive.store(false, Ordering::Relaxed);
        drop(self.open.take());
        if let Some(ep) = self.endpoint.upgrade() {
            ep.connect_failed();
        }
        let mut inner = self.handle.lock();
        inner.closed = true;
        let queue = std::mem::take(&mut inner.st.queue);
        drop(inner);
        let mut sinks = Vec::new();
        fail_queued(queue, false, "upstream connect failed", &mut sinks);
        self.handle.load.reset_closed();
        flush_all(&mut sinks);
    }

    async fn serve(&mut self, stream: &TcpStream) -> &'static str {
        let settings = self.settings;
        let handle = self.handle.clone();
        let mut rbuf = BytesMut::new();
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
        // Re-armed `tick_every` after each tick; polled only once it may have fired
        // ([`poll_timer`]).
        let tick = tokio::time::sleep(tick_every);
        tokio::pin!(tick);
        let mut tick_waits = false;
        let multiplexing = handle.multiplexing;
        let mut last_read = Instant::now();
        let mut last_busy = Instant::now();
        // Write progress as of the last tick, and since when the buffer has been stuck.
        let mut seen_written = 0u64;
        let mut seen_encoded = 0u64;
        let mut write_stalled: Option<Instant> = None;
        let mut heartbeat_sent: Option<Instant> = None;
        let mut has_heartbeat = true;
        let mut failed = Vec::new();
        let mut sinks: Vec<Arc<dyn ResponseSink>> = Vec::new();
        loop {
            let want_write = {
                let mut inner = handle.lock();
                let accepting = handle.accepting.load(Ordering::Relaxed);
                if !accepting && inner.st.pending.is_empty() && inner.wbuf.is_empty() {
                    // Told to go away (or idle) and everything owed has arrived.
                    return DRAINED;
                }
                let unloaded = inner.drain_queue(accepting, multiplexing, &mut failed);
                handle.load.sub(&inner, unloaded);
                // Everything the clients encoded since the task last ran goes out in
                // one write below, after a pending read: a backend that closed after
                // answering is seen before requests are written into a dead socket (the
                // ones not written are retried on a fresh connection).
                inner.write_scheduled = false;
                !inner.wbuf.is_empty()
            };
            for (reply, failure) in failed.drain(..) {
                reply.fail(failure, &mut sinks);
            }
            flush_all(&mut sinks);
            // Polled in this order by hand (see the client side's loop). One waker slot
            // per direction: this task is the only one that waits on the socket.
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(Wait::Readable(ready));
                }
                if handle.wake.poll_woken(cx).is_ready() {
                    return Poll::Ready(Wait::Woken);
                }
                if want_write {
                    if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                        return Poll::Ready(Wait::Writable(ready.is_ok()));
                    }
                }
                if poll_timer(tick.as_mut(), &mut tick_waits, cx).is_ready() {
                    return Poll::Ready(Wait::Tick);
                }
                Poll::Pending
            })
            .await;
            match event {
                Wait::Readable(ready) => {
                    if let Err(e) = ready {
                        tracing::debug!(error = %e, "upstream readable");
                        return "read error";
                    }
                    buffer_pool::ready_for_read(&mut rbuf);
                    let read = match crate::socket_io::read_once(stream, &mut rbuf) {
                        Ok(0) => return "closed by upstream",
                        Ok(n) => {
                            last_read = Instant::now();
                            heartbeat_sent = None;
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return "read error",
                    };
                    let result = self.decode_all(&mut rbuf, Stamp::of(last_read), &mut sinks);
                    buffer_pool::release_read(&mut rbuf);
                    if read < FLUSH_NOW_BYTES && turn_end::enabled() {
                        // The clients are flushed at the end of the worker's turn, after
                        // the other upstream connections this wake-up made readable
                        // answered them too: one write for a client whose requests went
                        // to several backends.
                        flush_at_turn_end(&mut sinks);
                        turn_end::batch_done();
                    } else {
                        if result.is_ok_and(|n| worth_coalescing(n, sinks.len())) {
                            // Let the other tasks this wake-up made ready run first, then
                            // flush.
                            tokio::task::yield_now().await;
                        }
                        flush_all(&mut sinks);
                    }
                    if let Err(reason) = result {
                        return reason;
                    }
                }
                Wait::Woken => {}
                Wait::Writable(ok) => {
                    if !ok || handle.lock().write_once().is_err() {
                        return "write error";
                    }
                }
                Wait::Tick => {
                    let now = Instant::now();
                    tick.as_mut().reset(now + tick_every);
                    let mut expired = Vec::new();
                    let mut inner = handle.lock();
                    let dropped = inner.st.sweep(now, &mut expired);
                    handle.load.sub(&inner, dropped);
                    if !expired.is_empty() {
                        drop(inner);
                        fail_expired(expired);
                        inner = handle.lock();
                    }
                    let st = &inner.st;
                    if self.endpoint.strong_count() == 0
                        && st.pending.is_empty()
                        && st.queue.is_empty()
                    {
                        // The endpoint left the config: nothing will use this connection.
                        return "pool closed";
                    }
                    // Stalled: bytes to write and none written since the last tick.
                    if inner.wbuf.is_empty() {
                        write_stalled = None;
                    } else if st.written != seen_written || write_stalled.is_none() {
                        write_stalled = Some(now);
                    }
                    seen_written = st.written;
                    if write_stalled
                        .is_some_and(|t| now.duration_since(t) >= settings.write_timeout)
                    {
                        return "write timeout: the backend stopped reading";
                    }
                    let busy = !st.pending.is_empty()
                        || !st.queue.is_empty()
                        || !inner.wbuf.is_empty()
                        || st.encoded != seen_encoded;
                    seen_encoded = st.encoded;
                    if busy {
                        last_busy = now;
                    } else {
                        // Tables sized for a burst go back to the allocator.
                        inner.st.shrink();
                    }
                    if !busy && now.duration_since(last_busy) >= settings.idle_timeout {
                        // Stop taking requests; the drained check above closes it.
                        handle.accepting.store(false, Ordering::Relaxed);
                        continue;
                    }
                    match heartbeat_sent {
                        Some(at) if now.duration_since(at) >= settings.heartbeat_interval => {
                            return "heartbeat unanswered";
                        }
                        None if has_heartbeat
                            && now.duration_since(last_read) >= settings.heartbeat_interval =>
                        {
                            let inner = &mut *inner;
                            let id = u64::from(inner.st.pending.next_free_id());
                            if let Some(io) = inner.io.as_mut() {
                                match io.codec.encode_heartbeat(id, &mut inner.wbuf) {
                                    Ok(true) => heartbeat_sent = Some(now),
                                    Ok(false) | Err(_) => has_heartbeat = false,
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Decodes every complete message in `rbuf` (read at `read_at`), taking the lock
    /// once per message and delivering responses with it released.
    fn decode_all(
        &self,
        rbuf: &mut BytesMut,
        read_at: Stamp,
        sinks: &mut Vec<Arc<dyn ResponseSink>>,
    ) -> Result<usize, &'static str> {
        let mut delivered = 0;
        loop {
            // An empty buffer holds no frame: the codec is not asked (it would say so).
            if rbuf.is_empty() {
                return Ok(delivered);
            }
            let mut inner = self.handle.lock();
            let Some(io) = inner.io.as_mut() else {
                return Ok(delivered);
            };
            // Borrowed where the codec returned it: nothing is moved out of the result.
            let mut result = io.codec.decode(rbuf);
            let msg = match &mut result {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(delivered),
                Err(e) => {
                    crate::observe::rate_limited!(tracing::Level::WARN, addr = %self.addr, error = %e, "bad frame from upstream");
                    return Err("decode error");
                }
            };
            let reply = self.on_message(msg, &mut inner);
            drop(inner);
            if let Some(reply) = reply {
                reply.respond(msg, read_at, sinks);
                delivered += 1;
            }
        }
    }

    /// Handles one message from the backend, with the connection's lock held; returns
    /// where a response goes.
    fn on_message(&self, msg: &Message, inner: &mut ConnInner) -> Option<ReplyTo> {
        match msg.kind() {
            MessageKind::Response => {
                inner.st.answered += 1;
                let Some(p) = inner.st.pending.remove(msg.request_id()) else {
                    tracing::debug!(
                        id = msg.request_id(),
                        "response for unknown or expired request"
                    );
                    return None;
                };
                self.handle.load.sub(inner, 1);
                p.reply
            }
            MessageKind::Heartbeat => {
                if let Some(io) = inner.io.as_mut() {
                    if let Err(e) = io.codec.encode_heartbeat_reply(msg, &mut inner.wbuf) {
                        tracing::debug!(error = %e, "cannot answer upstream heartbeat");
                    }
                }
                None
            }
            MessageKind::GoAway => {
                tracing::debug!(addr = %self.addr, "upstream asked to stop sending on this connection");
                self.handle.accepting.store(false, Ordering::Relaxed);
                None
            }
            MessageKind::Event => None,
            MessageKind::Request | MessageKind::OneWay => {
                tracing::debug!(addr = %self.addr, "ignoring a call sent by an upstream");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(id: u64) -> Message {
        Message::new(MessageKind::Request, id, Bytes::from_static(b"frame"))
    }

    fn envelope(deadline: Instant) -> Envelope {
        Envelope {
            reply: None,
            deadline,
            slot: None,
            charge: None,
        }
    }

    fn queued(id: u64, deadline: Instant) -> Queued {
        Queued {
            msg: request(id),
            env: envelope(deadline),
        }
    }

    fn pending(deadline: Instant) -> Pending {
        Pending {
            reply: None,
            deadline,
            _slot: None,
            _charge: None,
        }
    }

    #[test]
    fn a_request_is_unwritten_until_its_last_byte_is_written() {
        let mut st = ConnState::new();
        for (end, id) in [(100, 1), (200, 2), (300, 3)] {
            st.unwritten.push(end, id, &mut Some(request(id)));
        }
        st.wrote(150);
        assert_eq!(
            st.unwritten.ids(),
            [2, 3],
            "request 2 is half written: still unwritten"
        );
        st.wrote(50);
        assert_eq!(st.unwritten.len(), 1);
        st.wrote(100);
        assert_eq!(st.unwritten.len(), 0);
    }

    #[test]
    fn an_idle_connection_gives_back_the_room_a_burst_took() {
        let mut st = ConnState::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        for id in 0..1_000 {
            st.unwritten.push(id, id, &mut Some(request(id)));
            st.queue.push_back(queued(id, deadline));
            let pending_id = st.pending.next_free_id();
            st.pending.insert(pending_id, pending(deadline));
        }
        st.wrote(1_000);
        st.queue.clear();
        st.pending.drain().for_each(drop);
        assert_eq!(st.unwritten.len(), 0);
        assert!(st.unwritten.capacity() >= 1_000);
        st.shrink();
        assert_eq!(
            (
                st.unwritten.capacity(),
                st.queue.capacity(),
                st.pending.capacity()
            ),
            (0, 0, 0),
            "an idle connection keeps no table room"
        );
    }

    #[test]
    fn sweeping_drops_queued_requests_past_their_deadline() {
        let now = Instant::now();
        let mut st = ConnState::new();
        st.queue
            .push_back(queued(1, now - Duration::from_millis(1)));
        st.queue.push_back(queued(2, now + SWEEP_EVERY));
        assert_eq!(st.sweep(now, &mut Vec::new()), 1);
        assert_eq!(st.queue.len(), 1);
        assert_eq!(st.queue[0].msg.request_id(), 2);
    }

    #[test]
    fn sweeping_tells_the_clients_of_the_requests_it_drops() {
        use crate::delivery::tests::{reply_to, Recorder};
        let now = Instant::now();
        let client = Arc::new(Recorder::default());
        let mut st = ConnState::new();
        let with_client = |slot, deadline| Envelope {
            reply: Some(reply_to(&client, slot)),
            ..envelope(deadline)
        };
        let past = now - Duration::from_millis(1);
        let later = now + SWEEP_EVERY;
        // Queued: one past its deadline, one not, one past with no client (a mirror).
        for (slot, deadline) in [(1, past), (2, later)] {
            st.queue.push_back(Queued {
                msg: request(slot as u64),
                env: with_client(slot, deadline),
            });
        }
        st.queue.push_back(queued(3, past));
        // Written: one past its deadline by more than the grace, one within it.
        for (slot, deadline) in [(4, now - SWEEP_GRACE), (5, past)] {
            let id = st.pending.next_free_id();
            st.pending.insert(
                id,
                Pending {
                    reply: with_client(slot, deadline).reply,
                    ..pending(deadline)
                },
            );
        }
        let mut expired = Vec::new();
        assert_eq!(st.sweep(now, &mut expired), 3);
        assert_eq!((st.queue.len(), st.pending.len()), (1, 1));
        fail_expired(expired);
        let mut told = client.expired.lock().unwrap().clone();
        told.sort();
        assert_eq!(told, [1, 4], "each dropped request's client gets a timeout");
        assert_eq!(client.got.lock().unwrap().len(), 2, "and nothing else");
    }

    /// A connection handle with `load` requests in flight (no task behind it).
    fn conn(load: u32, alive: bool) -> Arc<ConnHandle> {
        let c = ConnHandle::new(true);
        c.load.add(&c.lock(), load);
        c.alive.store(alive, Ordering::Relaxed);
        Arc::new(c)
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
        assert_eq!(
            picked(&conns, Pool::choose(&conns, t, &AtomicUsize::new(0))),
            Some(1)
        );
        let conns = [conn(3, true), conn(0, true)];
        assert_eq!(
            picked(&conns, Pool::choose(&conns, t, &AtomicUsize::new(0))),
            Some(0)
        );
    }

    #[test]
    fn the_last_fit_is_tried_first_and_the_scan_restarts_at_the_first_when_it_is_full() {
        let t = MUX_SPREAD_THRESHOLD;
        let last = AtomicUsize::new(0);
        let conns = [
            conn(t, true),
            conn(t, true),
            conn(t - 2, true),
            conn(0, true),
        ];
        assert_eq!(picked(&conns, Pool::choose(&conns, t, &last)), Some(2));
        assert_eq!(last.load(Ordering::Relaxed), 2, "remembered");
        // Room appears on the first connection: the last fit still has room and is
        // kept (no scan), so a pipelined client's requests stay together.
        conns[0].load.sub(&conns[0].lock(), 10);
        assert_eq!(picked(&conns, Pool::choose(&conns, t, &last)), Some(2));
        // Once it is full, first fit again: the first with room, not the next one.
        conns[2].load.add(&conns[2].lock(), 2);
        assert_eq!(picked(&conns, Pool::choose(&conns, t, &last)), Some(0));
        assert_eq!(last.load(Ordering::Relaxed), 0);
        // A remembered index past the end (the list shrank), or a connection that died
        // or drains, is only a missed shortcut.
        let last = AtomicUsize::new(7);
        assert_eq!(picked(&conns, Pool::choose(&conns, t, &last)), Some(0));
        conns[0].alive.store(false, Ordering::Relaxed);
        assert_eq!(picked(&conns, Pool::choose(&conns, t, &last)), Some(3));
    }

    #[test]
    fn dead_or_draining_connections_are_skipped() {
        let t = MUX_SPREAD_THRESHOLD;
        let draining = conn(0, true);
        draining.accepting.store(false, Ordering::Relaxed);
        let conns = [conn(0, false), draining, conn(5, true)];
        assert_eq!(
            picked(&conns, Pool::choose(&conns, t, &AtomicUsize::new(0))),
            Some(2)
        );
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
        match Pool::choose(&conns, t, &AtomicUsize::new(0)) {
            Choice::Full { least } => {
                let least = least.map(|c| conns.iter().position(|x| Arc::ptr_eq(x, c)));
                assert_eq!(least, Some(Some(3)));
            }
            Choice::Fit(_) => panic!("no connection has room"),
        }
        match Pool::choose(&[], t, &AtomicUsize::new(0)) {
            Choice::Full { least } => assert!(least.is_none()),
            Choice::Fit(_) => panic!("an empty pool has no connection"),
        }
        // Codecs that cannot multiplex use threshold 1: only an idle connection fits.
        let conns = [conn(1, true), conn(0, true)];
        assert_eq!(
            picked(&conns, Pool::choose(&conns, 1, &AtomicUsize::new(0))),
            Some(1)
        );
    }

    #[test]
    fn only_large_pipelined_batches_are_held_back() {
        assert!(!worth_coalescing(8, 8), "a 4 KiB read: eight answers");
        assert!(
            !worth_coalescing(16, 16),
            "one answer per client (no pipelining)"
        );
        assert!(worth_coalescing(16, 1));
        assert!(worth_coalescing(256, 16));
        assert!(!worth_coalescing(15, 1));
    }

    #[tokio::test]
    async fn a_request_before_the_connection_is_up_is_queued_and_wakes_its_task() {
        let c = conn(0, true);
        let mut msg = Some(request(7));
        let sent = c.send(
            &mut msg,
            envelope(Instant::now() + SWEEP_EVERY),
            Instant::now(),
        );
        assert!(sent.is_ok(), "queued");
        assert!(msg.is_none(), "the queue keeps the request");
        assert_eq!(c.load(), 1);
        assert_eq!(c.lock().st.queue.len(), 1);
        tokio::time::timeout(Duration::from_secs(5), c.wake.woken())
            .await
            .expect("the connection's task is woken to take it");
    }

    #[test]
    fn a_closed_connection_hands_the_request_back_uncounted() {
        let c = conn(0, false);
        c.lock().closed = true;
        let mut msg = Some(request(2));
        let Err(refused) = c.send(
            &mut msg,
            envelope(Instant::now() + SWEEP_EVERY),
            Instant::now(),
        ) else {
            panic!("a closed connection takes nothing");
        };
        assert_eq!(refused.reason, "upstream connection unavailable");
        assert_eq!(
            msg.map(|m| m.request_id()),
            Some(2),
            "the request stays with the caller, for a retry"
        );
        assert_eq!(c.load(), 0, "the refused request is not counted");
    }
}
