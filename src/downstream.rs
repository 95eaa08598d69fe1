//! One client connection: decode requests, route them, send them upstream, and write
//! back responses in whatever order they complete.
//!
//! The connection is one task that reads its socket, and a state ([`ClientLink`]: codec,
//! in-flight table, deadlines, write buffer) that the task and the upstream connections
//! of the same worker call into directly. A request is decoded, routed and encoded into
//! an upstream connection's write buffer in one go; a response is encoded into this
//! connection's write buffer by the upstream connection's task that read it. No channel
//! on the request path; the snapshot is read without a lock, clusters through atomic
//! counters.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::FutureExt;
use meta_protocol::{
    Codec, DecodeError, LocalReply, LocalReplyKind, Message, MessageKind, ReplyContext,
    ResponseStatus,
};
use metaproxy_router::RouteMemo;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::buffer_pool;
use crate::clock::Stamp;
use crate::cluster::{ClusterRt, Endpoint};
use crate::delivery::{Failure, ReplyTo, ResponseSink};
use crate::filter::{
    ChainStep, Decision, FilterResponse, MAX_FILTER_WAIT, MAX_WAITING_PER_CONNECTION,
};
use crate::observe::metrics::ClosedReason;
use crate::observe::{AccessLogEntry, AccessStatus, LoggedMetadata};
use crate::request_token::RequestToken;
use crate::shared::ListenerCtx;
use crate::short_lock::{ShortGuard, ShortLock};
use crate::snapshot::ListenerRt;
use crate::task_wake::{poll_timer, poll_when_signalled, TaskWake};
use crate::turn_end::AtTurnEnd;
use crate::upstream::{Envelope, PoolKey, Refused};

/// When no request is in flight the deadline timer is parked this far ahead.
const PARKED: Duration = Duration::from_secs(365 * 24 * 3600);

/// While draining, a connection whose client was told to move (a protocol with a
/// go-away, such as Dubbo's read-only event) is closed once it has had nothing in flight
/// and stayed quiet this long (requests already sent are read and answered first).
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// The response mutation added while draining on connections whose protocol cannot
/// tell a client to move: codecs that carry response headers (the Thrift header
/// transport's info headers, for example) write `metaproxy-drain: 1`, so a client that
/// looks for it can open a new connection (which reaches the new process) at its own
/// pace. The connection itself stays open until the client closes it.
pub(crate) const DRAIN_HEADER: (&str, &str) = ("metaproxy-drain", "1");

/// Free retries of a request whose connections kept going away before writing it
/// (each one had served other requests, or was retired by the proxy).
const MAX_STALE_RETRIES: u8 = 16;
/// A connection's share of the process-wide buffer budget is brought up to date when it
/// changed by this much (or dropped to zero).
const BUDGET_STEP: usize = 16 * 1024;
/// Room asked for a reply made here (an error reply, a heartbeat answer).
const LOCAL_REPLY_ROOM: usize = 512;
/// References to its listener's routing state that answered requests give back, kept
/// per connection for the next requests: handing a kept one out costs no atomic
/// reference count (a weak reference's upgrade and a drop per request otherwise); 64
/// cover a Dubbo consumer's default 64 requests in flight, and more in flight only take
/// counts for the rest. (The connection's reference to itself that a request carries
/// to the upstream side is still cloned per request: keeping those too saved two more
/// atomic operations but cost about 19 instructions per request at pipeline 1.)
const MAX_SPARES: usize = 64;

/// What an access log entry needs from the start of a request.
/// Boxed where it is kept or passed (`Option<Box<LogStart>>`): a request carries it
/// through several calls and in its in-flight entry, which stay small (moved by a
/// pointer, not 330 bytes) whether access logging is on or not. With logging on, this
/// is the one allocation per request.
struct LogStart {
    time: SystemTime,
    metadata: LoggedMetadata,
    bytes_in: u64,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
}

impl LogStart {
    fn new(listener: Option<&ListenerRt>, msg: &Message) -> Self {
        let mut metadata = LoggedMetadata::new();
        if let Some(l) = listener {
            for key in &l.log_keys {
                if let Some(v) = msg.metadata().get(key) {
                    metadata.push(key, v);
                }
            }
        }
        LogStart {
            time: SystemTime::now(),
            metadata,
            bytes_in: msg.frame().len() as u64,
            route: None,
            cluster: None,
        }
    }
}

struct InFlight {
    log: Option<Box<LogStart>>,
    generation: u32,
    reply: ReplyContext,
    deadline: Instant,
    started: Stamp,
    listener: Arc<ListenerRt>,
    route: usize,
    cluster: usize,
    /// Index of the endpoint in the cluster's list (which the listener keeps as it is).
    endpoint: usize,
    attempts_left: u32,
    hash: Option<u64>,
    /// Size of the request frame, counted in the connection's buffered bytes.
    bytes: usize,
    /// Free retries used after stale connections (at most [`MAX_STALE_RETRIES`]).
    stale_retries: u8,
}

impl InFlight {
    fn cluster(&self) -> &Arc<ClusterRt> {
        &self.listener.clusters[self.cluster]
    }

    fn endpoint(&self) -> &Endpoint {
        &self.cluster().endpoints[self.endpoint]
    }

    /// Releases the endpoint and cluster slots this request held.
    fn release(&self) {
        self.cluster().request_finished(self.endpoint());
        self.cluster().release_pending();
    }
}

/// Why a request could not be handed to an upstream connection.
struct NotSent {
    kind: LocalReplyKind,
    reason: &'static str,
}

/// A request parked on a waiting filter.
type Parked = Pin<Box<dyn Future<Output = Resumed> + Send>>;

/// Serves one accepted client connection until it closes.
pub(crate) async fn serve(stream: TcpStream, ctx: Arc<ListenerCtx>, drain: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let codec = match ctx.protocol.downstream_codec() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(listener = %ctx.name, error = %e, "cannot create codec");
            return;
        }
    };
    // Buffers and tables are made on first use, so an idle connection costs little
    // memory.
    let link = Arc::new_cyclic(|me: &Weak<ClientLink>| {
        let me: Weak<dyn ResponseSink> = me.clone();
        ClientLink {
            state: ShortLock::new(Downstream {
                me,
                listener_spares: Vec::new(),
                ctx,
                codec,
                inflight: Slab::new(),
                next_deadline: None,
                route_memo: RouteMemo::default(),
                generation: 0,
                wbuf: BytesMut::new(),
                rng: SmallRng::from_rng(&mut rand::rng()),
                closing: false,
                inflight_bytes: 0,
                accounted: 0,
                read_buffered: 0,
                parked: Vec::new(),
                waiting: 0,
                drain_notice: None,
                listener_seen: None,
                full_metadata: true,
                flush_queued: false,
                read_paused: false,
                stalled_since: None,
                read_at: Instant::now(),
                read_stamp: Stamp::default(),
            }),
            stream,
            wake: TaskWake::default(),
        }
    });
    let mut rbuf = BytesMut::new();
    let reason = run(&link, drain, &mut rbuf).await;
    let mut conn = link.lock();
    if let Some(reason) = reason {
        conn.ctx.metrics.closed(reason).inc();
        crate::observe::rate_limited!(
            tracing::Level::INFO,
            listener = %conn.ctx.name,
            reason = reason.as_str(),
            "closing a client connection"
        );
    }
    // Requests still in flight when the connection ends release their slots.
    for f in conn.inflight.drain() {
        f.release();
    }
    // What is left unwritten is dropped with the connection. An upstream connection
    // may still hold this link for the end of its batch (its flush runs after other
    // tasks, this one included, had their turn): it then finds no request to answer
    // and nothing buffered, so nothing is counted in the budget again.
    conn.inflight_bytes = 0;
    conn.read_buffered = 0;
    conn.wbuf.clear();
    buffer_pool::release(&mut conn.wbuf);
    conn.ctx.shared.budget.update(conn.accounted, 0);
    conn.accounted = 0;
    conn.closing = true;
}

/// A client connection as its task and the upstream connections see it: the state
/// under a mutex (only ever taken by the worker thread that owns the connection with
/// per-core threading, never across an `.await`), the socket, and the task's wake-up.
struct ClientLink {
    state: ShortLock<Downstream>,
    stream: TcpStream,
    wake: TaskWake,
}

impl ClientLink {
    fn lock(&self) -> ShortGuard<'_, Downstream> {
        self.state.lock()
    }
}

impl ResponseSink for ClientLink {
    fn respond(&self, token: RequestToken, msg: &mut Message, read_at: Stamp) -> bool {
        let mut conn = self.lock();
        conn.on_response(token, msg, read_at, &self.stream);
        !std::mem::replace(&mut conn.flush_queued, true)
    }

    fn fail(&self, token: RequestToken, failure: Failure) -> bool {
        let mut conn = self.lock();
        conn.on_failure(token, failure);
        !std::mem::replace(&mut conn.flush_queued, true)
    }

    fn flush(&self) {
        self.flush_locked(self.lock());
    }

    fn flush_unless_awaiting(&self) -> bool {
        let conn = self.lock();
        if !conn.inflight.is_empty() {
            return false;
        }
        self.flush_locked(conn);
        true
    }
}

impl ClientLink {
    /// [`ResponseSink::flush`], with the state locked already.
    fn flush_locked(&self, mut conn: ShortGuard<'_, Downstream>) {
        conn.flush_queued = false;
        let left = conn.write_to(&self.stream).unwrap_or(true);
        conn.sync_budget();
        let wake = left || conn.closing || conn.read_paused;
        drop(conn);
        if wake {
            self.wake.wake();
        }
    }
}

/// The flush an upstream connection put off to the end of the worker's turn.
impl AtTurnEnd for ClientLink {
    fn at_turn_end(&self) {
        self.flush();
    }
}

struct Downstream {
    /// This connection, as upstream connections deliver to it.
    me: Weak<dyn ResponseSink>,
    /// References to the listener of `listener_seen` that answered requests held, handed
    /// out again while no reload happened (at most [`MAX_SPARES`]; an idle connection
    /// drops them, see [`Downstream::drop_spares`]).
    listener_spares: Vec<Arc<ListenerRt>>,
    ctx: Arc<ListenerCtx>,
    codec: Box<dyn Codec>,
    inflight: Slab<InFlight>,
    /// The earliest deadline of the requests in flight, or an earlier one: a request
    /// answered leaves it in place, and the timer then finds nothing due and moves it on
    /// ([`Downstream::expire_due`]). Each request's deadline is in its in-flight entry;
    /// none is kept anywhere else (a heap of them cost about 160 instructions per
    /// request at pipeline 64: its pushes, its pops, and the pruning of the entries of
    /// requests answered out of order).
    next_deadline: Option<Instant>,
    /// This connection's last route lookup: requests with the same values of the keys
    /// the routes read take its answer without a lookup.
    route_memo: RouteMemo,
    generation: u32,
    wbuf: BytesMut,
    rng: SmallRng,
    closing: bool,
    /// Bytes of the two-way requests in `inflight`.
    inflight_bytes: usize,
    /// What this connection counts in the process-wide buffer budget.
    accounted: usize,
    /// Bytes waiting in the task's read buffer (a frame not complete yet).
    read_buffered: usize,
    /// Requests parked on waiting filters, not yet handed to the task.
    parked: Vec<Parked>,
    /// Requests parked on waiting filters (at most [`MAX_WAITING_PER_CONNECTION`]).
    waiting: usize,
    /// While draining without a go-away: [`DRAIN_HEADER`], added to every response.
    drain_notice: Option<Arc<meta_protocol::Mutations>>,
    /// The listener last found and the snapshot generation it was found in.
    listener_seen: Option<(u64, Weak<ListenerRt>)>,
    /// Whether that listener reads more of a request than the codec's eager keys (see
    /// [`reads_beyond`]): requests decoded head first are then read in full.
    full_metadata: bool,
    /// An upstream connection will call [`ResponseSink::flush`] after its batch (or at
    /// the end of the worker's turn).
    flush_queued: bool,
    /// The task stopped reading (the write buffer or the requests in flight are at the
    /// limit): a delivery that frees room must wake it.
    read_paused: bool,
    /// Since when the write buffer has held bytes without any being written.
    stalled_since: Option<Instant>,
    /// When the requests being handled were read (or came back from a waiting filter):
    /// their start for deadlines, taken once per read, not per request.
    read_at: Instant,
    /// The same, as their start for latencies.
    read_stamp: Stamp,
}

/// A parked request, back from its waiting filter.
struct Resumed {
    msg: Message,
    listener: Arc<ListenerRt>,
    log: Option<Box<LogStart>>,
    index: usize,
    decision: Decision,
}

/// Serves until the connection ends; returns why when the proxy closed it on its own
/// for misbehaviour (write timeout, frame timeout, output limit).
async fn run(
    link: &ClientLink,
    mut drain: watch::Receiver<bool>,
    rbuf: &mut BytesMut,
) -> Option<ClosedReason> {
    let ctx = link.lock().ctx.clone();
    let stream = &link.stream;
    let limit = ctx.max_buffered_bytes;
    let mut reading = true;
    // When the partial frame started.
    let mut frame_started: Option<Instant> = None;
    // One timer for everything this loop waits for in time: request deadlines, the
    // idle close, and the write-stall and frame guards. It is armed at the earliest of
    // them and only ever moved earlier; when it fires before anything is due (the
    // deadline of a request answered since, a quiet period a read restarted), it is
    // re-armed for what is left. So a request, a reply or a read resets no timer.
    let mut timer_at = Instant::now() + PARKED;
    let timer = tokio::time::sleep_until(timer_at);
    tokio::pin!(timer);
    // Whether the timer holds this task's waker ([`poll_timer`]: polled only once it
    // may have fired; a poll cost about 120 instructions, twice per request at pipeline
    // 1).
    let mut timer_waits = false;
    // A connection accepted as the drain begins learns it on the first poll of
    // `drain.changed()`, like every other.
    if *drain.borrow() {
        drain.mark_changed();
    }
    // One future for the whole loop: a new `changed()` per pass would join and leave the
    // channel's waiter list. Once polled it stays in that list, and the drain wakes it;
    // until then, like the timer's, its branch only compares the channel's version
    // (`drain_probe`, a second receiver) instead of polling it.
    let drain_probe = drain.clone();
    let drain_signal = drain.changed();
    tokio::pin!(drain_signal);
    let mut drain_waits = false;
    let mut draining = false;
    // The connection closes once it has been quiet for `quiet` since `quiet_from` with
    // nothing in flight (`idle_timeout`, or `DRAIN_QUIET` once told to move).
    let mut quiet = ctx.idle_timeout;
    let mut quiet_from = Instant::now();
    // Requests parked on waiting filters; made on first use, so connections whose
    // filters never wait pay nothing.
    let mut waiting: Option<FuturesUnordered<Parked>> = None;
    loop {
        let (read_allowed, want_write, write_stalled, next_deadline) = {
            let mut conn = link.lock();
            if !conn.parked.is_empty() {
                let w = waiting.get_or_insert_with(FuturesUnordered::new);
                for parked in conn.parked.drain(..) {
                    w.push(parked);
                }
            }
            if conn.closing && conn.inflight.is_empty() && conn.waiting == 0 && conn.wbuf.is_empty()
            {
                return None;
            }
            if conn.wbuf.len() > 2 * limit {
                return Some(ClosedReason::OutputLimit);
            }
            conn.read_buffered = rbuf.len();
            conn.sync_budget();
            let next_deadline = conn.next_deadline;
            conn.read_paused = conn.wbuf.len() >= limit || conn.inflight_bytes >= limit;
            let read_allowed = reading && !conn.closing && !conn.read_paused;
            if conn.wbuf.is_empty() {
                conn.stalled_since = None;
            } else if conn.stalled_since.is_none() {
                conn.stalled_since = Some(Instant::now());
            }
            (
                read_allowed,
                !conn.wbuf.is_empty(),
                conn.stalled_since,
                next_deadline,
            )
        };
        if !read_allowed {
            // Our own back-pressure is not the client's slowness.
            frame_started = None;
        }
        // The earliest of what is due (a sum only for a guard that is running).
        let mut due = timer_at.min(quiet_from + quiet);
        if let Some(at) = next_deadline {
            due = due.min(at);
        }
        if let Some(t) = write_stalled {
            due = due.min(t + ctx.write_timeout);
        }
        if let Some(t) = frame_started {
            due = due.min(t + ctx.frame_timeout);
        }
        if due < timer_at {
            timer_at = due;
            timer.as_mut().reset(timer_at);
            // A timer that fired gave its waker away: it is polled again to get one.
            timer_waits = false;
        }
        // What the task waits for, polled in this order by hand (a `select!` over the
        // same six cost about 60 instructions a pass more, two passes a request at
        // pipeline 1, and moved its large output).
        let event = std::future::poll_fn(|cx| {
            if link.wake.poll_woken(cx).is_ready() {
                return Poll::Ready(Event::Woken);
            }
            if let Some(w) = waiting.as_mut().filter(|w| !w.is_empty()) {
                if let Poll::Ready(Some(resumed)) = w.poll_next_unpin(cx) {
                    // Handled here: a request held across the wait would make every
                    // connection's task as large as a request.
                    let mut conn = link.lock();
                    conn.waiting -= 1;
                    conn.on_resumed(resumed);
                    return Poll::Ready(Event::Resumed {
                        written: conn.write_to(stream).is_ok(),
                    });
                }
            }
            if poll_timer(timer.as_mut(), &mut timer_waits, cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            // `poll_read_ready`/`poll_write_ready` keep one waker per direction in the
            // socket's registration; `readable()`/`writable()` would enter and leave
            // its waiter list (under a lock) on every pass of this loop. This task is
            // the only one that waits on this socket.
            if want_write {
                if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(ready.is_ok()));
                }
            }
            if read_allowed {
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(Event::Readable(ready.is_ok()));
                }
            }
            if !draining {
                let changed = poll_when_signalled(
                    drain_signal.as_mut(),
                    &mut drain_waits,
                    |_| drain_probe.has_changed().unwrap_or(true),
                    cx,
                );
                if let Poll::Ready(changed) = changed {
                    return Poll::Ready(Event::Drain(changed.is_ok()));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Woken => {}
            Event::Resumed { written } => {
                if !written {
                    return None;
                }
            }
            Event::Timer => {
                let now = Instant::now();
                // Re-armed at the top of the loop for whatever is left.
                timer_at = now + PARKED;
                let mut conn = link.lock();
                if next_deadline.is_some_and(|at| at <= now) {
                    conn.expire_due();
                    if conn.write_to(stream).is_err() {
                        return None;
                    }
                }
                if conn
                    .stalled_since
                    .is_some_and(|t| t + ctx.write_timeout <= now)
                {
                    return Some(ClosedReason::WriteTimeout);
                }
                if frame_started.is_some_and(|t| t + ctx.frame_timeout <= now) {
                    return Some(ClosedReason::FrameTimeout);
                }
                if conn.inflight.is_empty() {
                    // Nothing in flight when the timer fired (at the latest the last
                    // request's deadline, or the idle close): the connection has been
                    // idle for a while.
                    conn.drop_spares();
                }
                if quiet_from + quiet <= now {
                    if conn.inflight.is_empty() && conn.waiting == 0 && conn.wbuf.is_empty() {
                        tracing::debug!(listener = %ctx.name, draining, "closing idle connection");
                        return None;
                    }
                    // Busy when the quiet period ended (answers came without waking
                    // this task): it starts again.
                    quiet_from = now;
                }
            }
            Event::Writable(ok) => {
                if !ok || link.lock().write_to(stream).is_err() {
                    return None;
                }
            }
            Event::Readable(ok) => {
                if !ok {
                    return None;
                }
                buffer_pool::ready_for_read(rbuf);
                match crate::socket_io::read_once(stream, rbuf) {
                    Ok(0) => {
                        reading = false;
                        let mut conn = link.lock();
                        conn.closing = true;
                        conn.on_eof(rbuf);
                        buffer_pool::release_read(rbuf);
                    }
                    Ok(_) => {
                        let now = Instant::now();
                        quiet_from = now;
                        let mut conn = link.lock();
                        conn.read_at = now;
                        conn.read_stamp = Stamp::of(now);
                        let decoded = conn.decode_all(rbuf);
                        if conn.write_to(stream).is_err() {
                            return None;
                        }
                        drop(conn);
                        crate::turn_end::batch_done();
                        if rbuf.is_empty() {
                            buffer_pool::release_read(rbuf);
                            frame_started = None;
                        } else if decoded > 0 || frame_started.is_none() {
                            frame_started = Some(now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
            Event::Drain(changed) => {
                draining = true;
                if changed {
                    // Tell the client to move where the protocol can say so; keep
                    // answering what it already sent, and close once the connection
                    // has been quiet with nothing in flight. A protocol that cannot
                    // announce it keeps its connection until the client closes it
                    // (or idle_timeout, or the drain timeout): closing between two
                    // requests would fail the client's next one.
                    let mut conn = link.lock();
                    let conn = &mut *conn;
                    let told_to_move = conn.codec.encode_go_away(&mut conn.wbuf).unwrap_or(false);
                    if told_to_move {
                        quiet = DRAIN_QUIET;
                        quiet_from = Instant::now();
                    } else {
                        let (key, value) = DRAIN_HEADER;
                        conn.drain_notice =
                            Some(Arc::new([(key.into(), value.into())].into_iter().collect()));
                    }
                }
            }
        }
    }
}

/// What woke a client connection's task (see the wait in [`run`]).
enum Event {
    /// An upstream connection or a filter asked for a pass ([`TaskWake`]).
    Woken,
    /// A request came back from a waiting filter and was handled (false: the write
    /// that followed failed).
    Resumed { written: bool },
    /// The loop's timer fired.
    Timer,
    /// The socket is writable (false: it failed).
    Writable(bool),
    /// The socket is readable (false: it failed).
    Readable(bool),
    /// The drain began (false: its sender is gone).
    Drain(bool),
}

impl Downstream {
    /// One `write` of the write buffer. Returns whether bytes are left.
    fn write_to(&mut self, stream: &TcpStream) -> io::Result<bool> {
        let n = crate::socket_io::write_once(stream, &mut self.wbuf)?;
        if self.wbuf.is_empty() {
            self.stalled_since = None;
        } else if n > 0 {
            self.stalled_since = Some(Instant::now());
        }
        Ok(!self.wbuf.is_empty())
    }

    /// Brings this connection's share of the process-wide buffer budget up to date, in
    /// steps of [`BUDGET_STEP`] (or to exactly zero) so that connections do not contend
    /// on the shared counter for every small request.
    #[inline]
    fn sync_budget(&mut self) {
        let now = self.inflight_bytes + self.wbuf.len() + self.read_buffered;
        if now.abs_diff(self.accounted) >= BUDGET_STEP || (now == 0 && self.accounted != 0) {
            self.ctx.shared.budget.update(self.accounted, now);
            self.accounted = now;
        }
    }

    /// Decodes and handles every complete frame in `rbuf`; returns how many.
    fn decode_all(&mut self, rbuf: &mut BytesMut) -> usize {
        let mut decoded = 0;
        // An empty buffer holds no frame: the codec is not asked (it would say so).
        while !self.closing && !rbuf.is_empty() {
            // The message stays where the codec returned it while it is routed and
            // encoded for the backend (passed by reference; moved only where it must be
            // kept): matching on a reference moves nothing out of the result.
            let mut result = self.codec.decode(rbuf);
            match &mut result {
                Ok(None) => break,
                Ok(slot) => {
                    decoded += 1;
                    self.on_message(slot);
                }
                Err(_) => {
                    if let Err(e) = result {
                        self.on_decode_error(e, rbuf);
                    }
                    break;
                }
            }
        }
        decoded
    }

    /// The routing state of this connection's listener in the current snapshot. The
    /// last one found is remembered with the snapshot's generation, weakly (an idle
    /// connection does not keep an old config alive): while no new snapshot was stored
    /// it is used again without loading the snapshot or looking the listener up.
    fn current_listener(&mut self) -> Option<Arc<ListenerRt>> {
        let shared = &self.ctx.shared;
        // Read before the snapshot, so a remembered pair never claims a newer
        // generation than the snapshot it came from.
        let generation = shared.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some((seen, weak)) = &self.listener_seen {
            if *seen == generation {
                if let Some(listener) = self.listener_spares.pop() {
                    return Some(listener);
                }
                if let Some(listener) = weak.upgrade() {
                    return Some(listener);
                }
            }
        }
        self.listener_spares.clear();
        let listener = shared.snapshot.load().listener(&self.ctx.name).cloned();
        self.listener_seen = listener.as_ref().map(|l| (generation, Arc::downgrade(l)));
        self.full_metadata = listener
            .as_deref()
            .is_some_and(|l| reads_beyond(l, self.ctx.protocol.caps.eager_keys));
        listener
    }

    /// Keeps the listener reference of an answered request for the next request, when
    /// it is the listener last found (while no reload happened it is the one the next
    /// request gets) and fewer than [`MAX_SPARES`] are kept; drops it otherwise.
    fn keep_listener(&mut self, listener: Arc<ListenerRt>) {
        let current = self
            .listener_seen
            .as_ref()
            .is_some_and(|(_, weak)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&listener)));
        if current && self.listener_spares.len() < MAX_SPARES {
            self.listener_spares.push(listener);
        }
    }

    /// Drops the kept listener references (with nothing in flight and no request for a
    /// while): an idle connection keeps no old config alive, and the vector goes back
    /// to the allocator.
    fn drop_spares(&mut self) {
        self.listener_spares = Vec::new();
    }

    /// Reads the rest of a request decoded head first; false (the request answered
    /// with `bad_request`) when that part is malformed. The connection stays: the
    /// frame's bounds are known.
    fn read_rest(&mut self, msg: &mut Message, log: &mut Option<Box<LogStart>>) -> bool {
        let Err(e) = self.codec.decode_metadata(msg) else {
            return true;
        };
        crate::observe::rate_limited!(tracing::Level::INFO, listener = %self.ctx.name, error = %e, "bad request from client");
        self.ctx.metrics.decode_errors.inc();
        let text = format!("metaproxy: bad request: {e}");
        self.local_reply_logged(
            &msg.reply_context(),
            LocalReplyKind::BadRequest,
            &text,
            log.take(),
            None,
        );
        false
    }

    fn on_decode_error(&mut self, e: DecodeError, rbuf: &mut BytesMut) {
        crate::observe::rate_limited!(
            tracing::Level::INFO,
            listener = %self.ctx.name,
            error = %e,
            "bad frame from client; closing the connection"
        );
        self.ctx.metrics.decode_errors.inc();
        if let Some(ctx) = &e.reply {
            let message = format!("metaproxy: bad request: {e}");
            self.local_reply(ctx, LocalReplyKind::BadRequest, &message);
        }
        rbuf.clear();
        self.closing = true;
    }

    /// The client closed its side. Bytes left over are a frame it never finished: a
    /// decode error, counted but not answered (its request id may not be known yet).
    fn on_eof(&mut self, rbuf: &mut BytesMut) {
        if rbuf.is_empty() {
            return;
        }
        tracing::info!(listener = %self.ctx.name, bytes = rbuf.len(), "client closed in the middle of a frame");
        self.ctx.metrics.decode_errors.inc();
        rbuf.clear();
    }

    fn on_message(&mut self, slot: &mut Option<Message>) {
        let Some(kind) = slot.as_ref().map(Message::kind) else {
            return;
        };
        match kind {
            MessageKind::Request | MessageKind::OneWay => self.dispatch(slot),
            MessageKind::Heartbeat => {
                let Some(msg) = slot.as_ref() else { return };
                // A buffer already past a pooled buffer's size just grows by this much.
                let _ = buffer_pool::ready_for_reply(
                    &mut self.wbuf,
                    LOCAL_REPLY_ROOM,
                    LOCAL_REPLY_ROOM,
                );
                if let Err(e) = self.codec.encode_heartbeat_reply(msg, &mut self.wbuf) {
                    tracing::debug!(error = %e, "cannot answer heartbeat");
                }
            }
            MessageKind::Event | MessageKind::GoAway | MessageKind::Response => {}
        }
    }

    /// Encodes a local reply; returns the bytes written. One-way requests are never
    /// answered (the reply is only counted), so codecs need not check.
    fn local_reply(&mut self, ctx: &ReplyContext, kind: LocalReplyKind, message: &str) -> usize {
        self.ctx.metrics.local_reply(kind).inc();
        if ctx.one_way {
            return 0;
        }
        // A buffer already past a pooled buffer's size just grows by this much.
        let _ = buffer_pool::ready_for_reply(&mut self.wbuf, LOCAL_REPLY_ROOM, LOCAL_REPLY_ROOM);
        let before = self.wbuf.len();
        let reply = LocalReply::new(kind, message);
        if let Err(e) = self.codec.encode_local_reply(ctx, &reply, &mut self.wbuf) {
            tracing::warn!(error = %e, "cannot encode local reply");
        }
        self.wbuf.len() - before
    }

    /// A local reply that also writes the access log entry.
    fn local_reply_logged(
        &mut self,
        ctx: &ReplyContext,
        kind: LocalReplyKind,
        message: &str,
        log: Option<Box<LogStart>>,
        endpoint: Option<SocketAddr>,
    ) {
        let bytes = self.local_reply(ctx, kind, message);
        self.access(log, AccessStatus::Local(kind), endpoint, bytes);
    }

    /// Inlined, so that a request without an access log costs two tests and no call.
    #[inline(always)]
    fn access(
        &self,
        log: Option<Box<LogStart>>,
        status: AccessStatus,
        endpoint: Option<SocketAddr>,
        bytes_out: usize,
    ) {
        if let (Some(logger), Some(start)) = (&self.ctx.access_log, log) {
            self.log_access(logger, start, status, endpoint, bytes_out);
        }
    }

    #[inline(never)]
    fn log_access(
        &self,
        logger: &crate::observe::AccessLogger,
        start: Box<LogStart>,
        status: AccessStatus,
        endpoint: Option<SocketAddr>,
        bytes_out: usize,
    ) {
        let start = *start;
        let duration = start.time.elapsed().unwrap_or_default();
        logger.log(AccessLogEntry {
            time: start.time,
            listener: self.ctx.name.clone(),
            route: start.route,
            cluster: start.cluster,
            endpoint,
            metadata: start.metadata,
            status,
            duration,
            bytes_in: start.bytes_in,
            bytes_out: bytes_out as u64,
        });
    }

    fn dispatch(&mut self, slot: &mut Option<Message>) {
        let Some(msg) = slot.as_mut() else { return };
        let Some(listener) = self.current_listener() else {
            let ctx = msg.reply_context();
            let log = self
                .ctx
                .access_log
                .as_ref()
                .map(|_| Box::new(LogStart::new(None, msg)));
            return self.local_reply_logged(
                &ctx,
                LocalReplyKind::NoRoute,
                "metaproxy: listener has no routes",
                log,
                None,
            );
        };
        if msg.metadata_deferred() && self.full_metadata && !self.read_rest(msg, &mut None) {
            return;
        }
        let log = self
            .ctx
            .access_log
            .as_ref()
            .map(|_| Box::new(LogStart::new(Some(&listener), msg)));
        if !listener.filters.is_empty() {
            let step = listener
                .filters
                .on_request(0, &self.ctx.name, msg, &listener.table);
            return self.after_filters(step, slot, listener, log);
        }
        self.forward(slot, listener, log);
    }

    /// Acts on where the request filters left a request: forward it, answer it, or park
    /// it until a waiting filter decides.
    fn after_filters(
        &mut self,
        step: ChainStep,
        slot: &mut Option<Message>,
        listener: Arc<ListenerRt>,
        log: Option<Box<LogStart>>,
    ) {
        let Some(msg) = slot.as_ref() else { return };
        match step {
            ChainStep::Continue => self.forward(slot, listener, log),
            ChainStep::Reply(kind, text) => {
                let ctx = msg.reply_context();
                self.local_reply_logged(&ctx, kind, &text, log, None);
            }
            ChainStep::Wait { index, pending } => {
                if self.waiting >= MAX_WAITING_PER_CONNECTION {
                    let ctx = msg.reply_context();
                    let text = "metaproxy: overloaded: too many requests waiting on filters";
                    return self.local_reply_logged(
                        &ctx,
                        LocalReplyKind::Overloaded,
                        text,
                        log,
                        None,
                    );
                }
                let Some(msg) = slot.take() else { return };
                self.waiting += 1;
                self.parked.push(Box::pin(async move {
                    let waited = tokio::time::timeout(
                        MAX_FILTER_WAIT,
                        std::panic::AssertUnwindSafe(pending).catch_unwind(),
                    )
                    .await;
                    let decision = match waited {
                        Ok(Ok(decision)) => decision,
                        Ok(Err(_panic)) => Decision::Reply(
                            LocalReplyKind::UpstreamFailure,
                            "metaproxy: a filter failed".into(),
                        ),
                        Err(_elapsed) => Decision::Reply(
                            LocalReplyKind::Timeout,
                            "metaproxy: timeout: a filter did not decide in time".into(),
                        ),
                    };
                    Resumed {
                        msg,
                        listener,
                        log,
                        index,
                        decision,
                    }
                }));
            }
        }
    }

    /// Goes on with a request a waiting filter has decided on.
    fn on_resumed(&mut self, resumed: Resumed) {
        let Resumed {
            mut msg,
            listener,
            log,
            index,
            decision,
        } = resumed;
        self.read_at = Instant::now();
        self.read_stamp = Stamp::of(self.read_at);
        let step =
            listener
                .filters
                .resume(index, decision, &self.ctx.name, &mut msg, &listener.table);
        self.after_filters(step, &mut Some(msg), listener, log);
    }

    /// Routes a request that passed the filters and hands it to an upstream connection.
    fn forward(
        &mut self,
        slot: &mut Option<Message>,
        listener: Arc<ListenerRt>,
        mut log: Option<Box<LogStart>>,
    ) {
        let Some(msg) = slot.as_mut() else { return };
        let Some(route) = listener
            .table
            .route_with_memo(msg.metadata(), &mut self.route_memo)
        else {
            let ctx = msg.reply_context();
            let text = no_route_message(msg);
            return self.local_reply_logged(&ctx, LocalReplyKind::NoRoute, &text, log, None);
        };
        let route_index = route.index();
        let hash = route.hash_key(msg.metadata());
        let cluster = route.pick_cluster_for(hash, &mut self.rng);
        let timeout = route.timeout();
        let attempts = route.retries();
        msg.add_shared_mutations(route.request_mutations());
        if msg.metadata_deferred() && !msg.mutations().is_empty() && !self.read_rest(msg, &mut log)
        {
            // Mutations are merged where the attachments lie (the codec could find them
            // on its own, on a copy of the message for each copy sent).
            return;
        }
        listener.requests[route_index][cluster].inc();
        if let Some(l) = &mut log {
            l.route = Some(route.name_shared().clone());
            l.cluster = Some(listener.clusters[cluster].name.clone());
        }
        let started = self.read_stamp;
        let deadline = self.read_at + timeout;

        let mirrors: smallvec::SmallVec<[usize; 4]> = route
            .firing_mirrors(&mut self.rng)
            .map(|m| m.cluster())
            .collect();
        for mirror in mirrors {
            let target = &listener.clusters[mirror];
            let mut copy = Some(msg.clone());
            match self.send(target, &mut copy, hash, None, deadline) {
                Ok(_) => target.metrics.mirror_sent.inc(),
                Err(_) => target.metrics.mirror_dropped.inc(),
            }
        }

        if msg.kind() == MessageKind::OneWay {
            match self.send(&listener.clusters[cluster], slot, hash, None, deadline) {
                Ok(endpoint) => {
                    let addr = listener.clusters[cluster].endpoints[endpoint].addr;
                    self.access(log, AccessStatus::OneWay, Some(addr), 0)
                }
                Err(not_sent) => {
                    tracing::debug!(reason = not_sent.reason, "one-way request dropped");
                    self.ctx.metrics.local_reply(not_sent.kind).inc();
                    self.access(log, AccessStatus::Local(not_sent.kind), None, 0);
                }
            }
            return;
        }

        let reply = msg.reply_context();
        let bytes = msg.frame().len();
        if !self.ctx.shared.budget.has_room(bytes) {
            return self.local_reply_logged(
                &reply,
                LocalReplyKind::Overloaded,
                "metaproxy: overloaded: the proxy's buffer budget is used up",
                log,
                None,
            );
        }
        let key = self.inflight.vacant_key();
        self.generation = self.generation.wrapping_add(1);
        let token = RequestToken::new(key, self.generation);
        let mut attempts_left = attempts;
        let target = &listener.clusters[cluster];
        match self.send_two_way(target, slot, hash, token, deadline, &mut attempts_left) {
            Ok(endpoint) => {
                self.arm_deadline(deadline);
                self.inflight.insert(InFlight {
                    log,
                    generation: self.generation,
                    reply,
                    deadline,
                    started,
                    listener,
                    route: route_index,
                    cluster,
                    endpoint,
                    attempts_left,
                    hash,
                    bytes,
                    stale_retries: 0,
                });
                self.inflight_bytes += bytes;
            }
            Err(NotSent { kind, reason, .. }) => {
                let text = format!("metaproxy: {reason}");
                self.local_reply_logged(&reply, kind, &text, log, None);
            }
        }
    }

    /// Sends a two-way request whose reply goes to `token`, retrying requests that were
    /// never sent (connect failure, connection gone) while `attempts_left` allows.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands the request back without a heap allocation"
    )]
    fn send_two_way(
        &mut self,
        cluster: &Arc<ClusterRt>,
        msg: &mut Option<Message>,
        hash: Option<u64>,
        token: RequestToken,
        deadline: Instant,
        attempts_left: &mut u32,
    ) -> Result<usize, NotSent> {
        loop {
            let reply_to = ReplyTo {
                sink: self.me.clone(),
                token,
            };
            match self.send(cluster, msg, hash, Some(reply_to), deadline) {
                Ok(endpoint) => return Ok(endpoint),
                Err(not_sent)
                    if not_sent.kind == LocalReplyKind::UpstreamFailure
                        && *attempts_left > 0
                        && msg.is_some() =>
                {
                    *attempts_left -= 1;
                }
                Err(not_sent) => return Err(not_sent),
            }
        }
    }

    /// Hands the request in `msg` to a connection of an endpoint of `cluster`, which
    /// encodes it where it lies and moves it out only to keep it (see
    /// [`crate::upstream::ConnHandle::send`]); when it is not sent it stays in `msg`.
    /// Returns the index of the endpoint that took it in `cluster.endpoints`.
    fn send(
        &mut self,
        cluster: &Arc<ClusterRt>,
        msg: &mut Option<Message>,
        hash: Option<u64>,
        reply: Option<ReplyTo>,
        deadline: Instant,
    ) -> Result<usize, NotSent> {
        let two_way = reply.is_some();
        let Some((frame_len, wire)) = msg.as_ref().map(|m| (m.frame().len(), m.wire())) else {
            return Err(NotSent {
                kind: LocalReplyKind::UpstreamFailure,
                reason: "no request to send",
            });
        };
        // Two-way requests hold a pending slot until their reply reaches this connection;
        // mirror copies and one-way calls hold one (a guard) inside the upstream
        // connection, so a slow backend bounds them too.
        let mut slot = None;
        let acquired = if two_way {
            cluster.try_acquire_pending()
        } else {
            slot = cluster.try_slot();
            slot.is_some()
        };
        if !acquired {
            return Err(NotSent {
                kind: LocalReplyKind::Overloaded,
                reason: "overloaded: too many pending requests",
            });
        }
        // Copies and one-way calls outlive this connection's accounting: they carry
        // their bytes in the budget themselves.
        let charge = if two_way {
            None
        } else {
            match self.ctx.shared.budget.charge(frame_len) {
                Some(c) => Some(c),
                None => {
                    return Err(NotSent {
                        kind: LocalReplyKind::Overloaded,
                        reason: "overloaded: the proxy's buffer budget is used up",
                    })
                }
            }
        };
        let Some(index) = cluster.lb.pick(hash, &mut self.rng, &**cluster) else {
            if two_way {
                cluster.release_pending();
            }
            return Err(NotSent {
                kind: LocalReplyKind::UpstreamFailure,
                reason: "no healthy endpoint",
            });
        };
        let endpoint = &cluster.endpoints[index];
        let key = PoolKey {
            protocol: self.ctx.protocol.id,
            wire,
            worker: crate::runtime::worker_id(),
        };
        let env = Envelope {
            reply,
            deadline,
            slot,
            charge,
        };
        let read_at = self.read_at;
        let sent = endpoint.with_connection(key, &self.ctx.protocol, |conn| match conn {
            Some(conn) => conn.send(msg, env, read_at),
            None => Err(Refused {
                env,
                reason: "upstream connection unavailable",
            }),
        });
        match sent {
            Ok(()) => {
                if two_way {
                    cluster.request_started(endpoint);
                }
                Ok(index)
            }
            Err(Refused { env, reason }) => {
                drop(env);
                if two_way {
                    cluster.release_pending();
                }
                Err(NotSent {
                    kind: LocalReplyKind::UpstreamFailure,
                    reason,
                })
            }
        }
    }

    fn take(&mut self, token: RequestToken) -> Option<InFlight> {
        match self.inflight.get(token.slot()) {
            Some(f) if token.is_for(f.generation) => {
                let f = self.inflight.remove(token.slot());
                self.inflight_bytes -= f.bytes;
                Some(f)
            }
            _ => None,
        }
    }

    /// The response to request `token`, read at `read_at`, encoded for the client in
    /// place. Replies that would take the write buffer past a pooled buffer's size are
    /// written to `stream` first.
    fn on_response(
        &mut self,
        token: RequestToken,
        msg: &mut Message,
        read_at: Stamp,
        stream: &TcpStream,
    ) {
        let Some(mut f) = self.take(token) else {
            return;
        };
        let elapsed = read_at.since(f.started);
        f.release();
        msg.set_request_id(f.reply.request_id);
        let route = f.listener.table.routes().get(f.route);
        if let Some(route) = route {
            msg.add_shared_mutations(route.response_mutations());
        }
        // Filters read the metadata, and mutations are merged where it lies (the codec
        // could find it on its own, on a copy of the message): read the rest first.
        let reads = !f.listener.filters.is_empty()
            || !msg.mutations().is_empty()
            || self.drain_notice.is_some();
        if reads && msg.metadata_deferred() {
            if let Err(e) = self.codec.decode_metadata(msg) {
                // The backend answered with garbage: an error response from it (counted
                // as `error`, and a failure for outlier detection), not a success.
                f.cluster().record_failure(f.endpoint());
                f.listener.responses[f.cluster].record(ResponseStatus::Error, elapsed);
                self.bad_response(f, &e);
                return;
            }
        }
        f.cluster().record_success(f.endpoint());
        f.listener.responses[f.cluster].record(msg.status(), elapsed);
        if let Some(route) = route {
            if !f.listener.filters.is_empty() {
                f.listener.filters.on_response(&mut FilterResponse::new(
                    &self.ctx.name,
                    route.name(),
                    &f.cluster().name,
                    msg,
                    elapsed,
                ));
            }
        }
        if let Some(notice) = &self.drain_notice {
            msg.add_shared_mutations(notice);
        }
        let frame = msg.frame().len();
        let need = frame + buffer_pool::MUTATION_ROOM;
        let expected = frame * (self.inflight.len() + 1) + buffer_pool::MUTATION_ROOM;
        if !buffer_pool::ready_for_reply(&mut self.wbuf, need, expected) {
            // Replies the response would take past a pooled buffer: written first (an
            // error is met again by the flush this response queues).
            let _ = self.write_to(stream);
            let _ = buffer_pool::ready_for_reply(&mut self.wbuf, need, expected);
        }
        let before = self.wbuf.len();
        let log = f.log.take();
        let endpoint = Some(f.endpoint().addr);
        match self.codec.encode(msg, &mut self.wbuf) {
            Ok(()) => {
                let bytes = self.wbuf.len() - before;
                self.access(log, AccessStatus::Response(msg.status()), endpoint, bytes);
            }
            Err(e) => {
                crate::observe::rate_limited!(tracing::Level::WARN, error = %e, "cannot encode response for client");
                let text = format!("metaproxy: response could not be forwarded: {e}");
                self.response_failed(&f.reply, &text, log, endpoint);
            }
        }
        self.keep_listener(f.listener);
    }

    /// A response whose metadata, read on demand, turned out malformed: the client gets
    /// a local reply (the backend answered, so no retry) and the connection stays.
    fn bad_response(&mut self, mut f: InFlight, e: &meta_protocol::DecodeError) {
        crate::observe::rate_limited!(tracing::Level::WARN, error = %e, "malformed response from upstream");
        let text = format!("metaproxy: the upstream response could not be decoded: {e}");
        let log = f.log.take();
        self.response_failed(&f.reply, &text, log, Some(f.endpoint().addr));
    }

    /// Answers a request whose response cannot be forwarded with an upstream-failure
    /// local reply.
    fn response_failed(
        &mut self,
        reply: &ReplyContext,
        text: &str,
        log: Option<Box<LogStart>>,
        endpoint: Option<SocketAddr>,
    ) {
        self.local_reply_logged(reply, LocalReplyKind::UpstreamFailure, text, log, endpoint);
    }

    /// The failure of request `token`: a retry when it was never written and the route
    /// allows one, else a local reply.
    fn on_failure(&mut self, token: RequestToken, failure: Failure) {
        let Failure {
            unsent,
            reason,
            stale,
            expired,
        } = failure;
        let Some(mut f) = self.take(token) else {
            return;
        };
        if expired {
            return self.timed_out(f);
        }
        f.release();
        let cluster = f.cluster().clone();
        // A connection the backend closed between requests is no sign of a
        // failing endpoint, and its unwritten request gets a free retry.
        let stale_retry = stale && f.stale_retries < MAX_STALE_RETRIES;
        if !stale {
            cluster.record_failure(f.endpoint());
        }
        let mut unsent = unsent;
        if unsent.is_some() && (stale_retry || f.attempts_left > 0) {
            if stale_retry {
                f.stale_retries += 1;
            } else {
                f.attempts_left -= 1;
            }
            let deadline = f.deadline;
            let mut attempts_left = f.attempts_left;
            if let Ok(endpoint) = self.send_two_way(
                &cluster,
                &mut unsent,
                f.hash,
                token,
                deadline,
                &mut attempts_left,
            ) {
                f.endpoint = endpoint;
                f.attempts_left = attempts_left;
                // `take` freed this slot and nothing was inserted since.
                let entry = self.inflight.vacant_entry();
                debug_assert_eq!(entry.key(), token.slot());
                self.inflight_bytes += f.bytes;
                entry.insert(f);
                return;
            }
        }
        let text = format!("metaproxy: {reason}");
        let endpoint = Some(f.endpoint().addr);
        self.local_reply_logged(
            &f.reply,
            LocalReplyKind::UpstreamFailure,
            &text,
            f.log.take(),
            endpoint,
        );
    }

    /// Arms the connection's timer for a request that times out at `at` (its in-flight
    /// entry holds the deadline).
    #[inline]
    fn arm_deadline(&mut self, at: Instant) {
        if self.next_deadline.is_none_or(|next| at < next) {
            self.next_deadline = Some(at);
        }
    }

    /// Times out every request whose deadline has passed, earliest first, and moves the
    /// timer to the earliest deadline left. One pass over the in-flight table, each
    /// time the timer fires: about once per route timeout under steady traffic (the
    /// request it was armed for has mostly been answered by then), never per request.
    fn expire_due(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        // Allocated only when something is due (a timeout reply allocates its text
        // anyway).
        let mut due = Vec::new();
        for (slot, f) in self.inflight.iter() {
            if f.deadline <= now {
                due.push((f.deadline, RequestToken::new(slot, f.generation)));
            } else if next.is_none_or(|n| f.deadline < n) {
                next = Some(f.deadline);
            }
        }
        self.next_deadline = next;
        due.sort_unstable();
        for (at, token) in due {
            self.on_timeout(token, at);
        }
    }

    fn on_timeout(&mut self, token: RequestToken, at: Instant) {
        // The slot still holds a request due at `at`; `take` checks it is the same request.
        if !matches!(self.inflight.get(token.slot()), Some(f) if f.deadline == at) {
            return;
        }
        if let Some(f) = self.take(token) {
            self.timed_out(f);
        }
    }

    /// Answers request `f`, taken from the in-flight table, with a `timeout` reply.
    fn timed_out(&mut self, mut f: InFlight) {
        f.release();
        f.cluster().record_failure(f.endpoint());
        let text = format!(
            "metaproxy: timeout: no response from {} within the route timeout",
            f.endpoint().address
        );
        let endpoint = Some(f.endpoint().addr);
        self.local_reply_logged(
            &f.reply,
            LocalReplyKind::Timeout,
            &text,
            f.log.take(),
            endpoint,
        );
    }
}

/// Whether `listener` reads request metadata beyond `eager` keys: it has filters, or
/// its routes (matches and hash policies, also the keys its access log records) name
/// another key.
fn reads_beyond(listener: &ListenerRt, eager: &[&str]) -> bool {
    !listener.filters.is_empty()
        || listener
            .log_keys
            .iter()
            .any(|k| !eager.contains(&k.as_ref()))
}

fn no_route_message(msg: &Message) -> String {
    let md = msg.metadata();
    let what: Vec<String> = ["service", "interface", "method", "version", "group"]
        .iter()
        .filter_map(|k| md.get(k).map(|v| format!("{k}={v}")))
        .collect();
    if what.is_empty() {
        "metaproxy: no route matched the request".to_owned()
    } else {
        format!(
            "metaproxy: no route matched the request ({})",
            what.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    //! Deadlines on tokio's paused clock, moved by hand: a blocking task held open for
    //! the whole test keeps tokio from auto-advancing the clock while tasks wait on
    //! sockets, so time passes only through `tokio::time::advance` and every timing is
    //! exact (and takes no wall time).

    use super::*;
    use crate::runtime::Threading;
    use crate::{RunningServer, Server};
    use metaproxy_example_kv::{frames, KvCodec, KvCodecFactory, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The size of the future an async fn returns, without calling it.
    fn returned_size<F, Fut>(_: &F) -> usize
    where
        F: Fn(TcpStream, Arc<ListenerCtx>, watch::Receiver<bool>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn an_idle_connection_task_stays_in_its_allocation_size_class() {
        // Every client connection is one tokio task holding this future, allocated in
        // one of the allocator's size classes. 16 bytes more once moved the task to
        // the next class: 156 more bytes per idle connection (1,790 -> 1,946, with
        // 10,000 connections; docs/PERFORMANCE.md). A change that needs more room must
        // measure what it costs per connection and move this bound on purpose.
        // Release builds are what runs; a debug build lays the future out larger.
        let bound = if cfg!(debug_assertions) { 728 } else { 712 };
        let size = returned_size(&serve);
        assert!(
            size <= bound,
            "the client connection future is {size} bytes (bound {bound})"
        );
    }

    /// A kv backend that answers `service: echo` requests at once and never answers
    /// any other.
    async fn backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut codec = KvCodec::new(1 << 20);
                    let mut buf = BytesMut::new();
                    while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        let mut out = BytesMut::new();
                        while let Ok(Some(m)) = codec.decode(&mut buf) {
                            if m.metadata().get("service") == Some("echo") {
                                out.extend_from_slice(&frames::response(
                                    m.request_id(),
                                    0,
                                    &[],
                                    frames::body(&m),
                                ));
                            }
                        }
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A proxy whose routes differ only by timeout: slow 3 s, fast 1 s, echo 2 s.
    async fn proxy(backend: SocketAddr) -> RunningServer {
        let yaml = format!(
            r#"
listeners:
  - {{name: kv-in, address: "127.0.0.1:0", codec: kv, route_config: r}}
route_configs:
  - name: r
    routes:
      - name: slow
        match: {{metadata: [{{key: service, exact: slow}}]}}
        route: {{cluster: b, timeout: 3s}}
      - name: fast
        match: {{metadata: [{{key: service, exact: fast}}]}}
        route: {{cluster: b, timeout: 1s}}
      - name: echo
        route: {{cluster: b, timeout: 2s}}
clusters:
  - {{name: b, endpoints: ["{backend}"]}}
"#
        );
        let config = crate::config::parse(&yaml, "test.yaml".as_ref()).unwrap();
        let mut codecs = crate::default_registry();
        codecs.register(Arc::new(KvCodecFactory));
        Server::new(config, codecs)
            .unwrap()
            .bind_with(Threading::WorkStealing { workers: 0 })
            .await
            .unwrap()
    }

    struct Client {
        stream: TcpStream,
        codec: KvCodec,
        buf: BytesMut,
    }

    impl Client {
        async fn connect(p: &RunningServer) -> Client {
            Client {
                stream: TcpStream::connect(p.local_addr("kv-in").unwrap())
                    .await
                    .unwrap(),
                codec: KvCodec::new(1 << 20),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, requests: &[(u64, &str)]) {
            let mut out = BytesMut::new();
            for (id, service) in requests {
                out.extend_from_slice(&frames::request(*id, &[("service", service)], b"x"));
            }
            self.stream.write_all(&out).await.unwrap();
        }

        /// The next reply (the clock stands still meanwhile).
        async fn recv(&mut self) -> Message {
            loop {
                if let Some(m) = self.try_recv() {
                    return m;
                }
                self.stream.readable().await.unwrap();
            }
        }
    }

    /// Freezes the paused clock until dropped: tokio does not auto-advance time while a
    /// blocking task runs.
    struct Frozen(Option<std::sync::mpsc::Sender<()>>);

    fn freeze_clock() -> Frozen {
        let (hold, release) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = release.recv();
        });
        Frozen(Some(hold))
    }

    impl Drop for Frozen {
        fn drop(&mut self) {
            self.0.take();
        }
    }

    /// Lets every task run and every socket event be seen, without moving the clock.
    async fn settle() {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    /// Moves the clock by `ms` and lets the proxy react.
    async fn advance_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        settle().await;
    }

    impl Client {
        /// A message that has already arrived, without waiting.
        fn try_recv(&mut self) -> Option<Message> {
            loop {
                if let Some(m) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(m);
                }
                match self.stream.try_read_buf(&mut self.buf) {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                }
            }
        }

        /// Asserts that nothing has arrived.
        fn assert_quiet(&mut self) {
            if let Some(m) = self.try_recv() {
                panic!(
                    "unexpected reply to {} with status {}",
                    m.request_id(),
                    frames::status(&m)
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_in_deadline_order_at_the_route_timeouts() {
        let _frozen = freeze_clock();
        let p = proxy(backend().await).await;
        let mut c = Client::connect(&p).await;
        c.send(&[(1, "slow"), (2, "fast"), (3, "echo")]).await;
        let r = c.recv().await;
        assert_eq!((r.request_id(), frames::status(&r)), (3, Status::Ok as u8));

        advance_ms(999).await;
        c.assert_quiet();
        advance_ms(1).await;
        let r = c.recv().await;
        assert_eq!(
            (r.request_id(), frames::status(&r)),
            (2, Status::Timeout as u8),
            "at 1 s"
        );

        // The answered request's deadline (2 s) passes without a reply.
        advance_ms(1_999).await;
        c.assert_quiet();
        advance_ms(1).await;
        let r = c.recv().await;
        assert_eq!(
            (r.request_id(), frames::status(&r)),
            (1, Status::Timeout as u8),
            "at 3 s"
        );

        advance_ms(60_000).await;
        c.assert_quiet();
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_passed_together_fire_earliest_first() {
        let _frozen = freeze_clock();
        let p = proxy(backend().await).await;
        let mut c = Client::connect(&p).await;
        c.send(&[(1, "slow"), (2, "fast"), (3, "medium"), (4, "echo")])
            .await;
        let r = c.recv().await;
        assert_eq!((r.request_id(), frames::status(&r)), (4, Status::Ok as u8));
        // One step past every deadline: the timer fires once, for all three.
        advance_ms(10_000).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = c.recv().await;
            got.push((r.request_id(), frames::status(&r)));
        }
        let timeout = Status::Timeout as u8;
        assert_eq!(got, [(2, timeout), (3, timeout), (1, timeout)]);
        advance_ms(60_000).await;
        c.assert_quiet();
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_of_answered_requests_never_fire_even_when_their_slot_is_reused() {
        let _frozen = freeze_clock();
        let p = proxy(backend().await).await;
        let mut c = Client::connect(&p).await;
        // 40 answered requests, then a slow one that reuses the first slot, then 40 more
        // answered ones: the timer, armed for the first answered one (2 s), fires for
        // nothing and moves on to the slow one's deadline.
        let echo = |ids: std::ops::Range<u64>| -> Vec<(u64, &str)> {
            ids.map(|id| (id, "echo")).collect()
        };
        c.send(&echo(10..50)).await;
        for _ in 0..40 {
            assert_eq!(frames::status(&c.recv().await), Status::Ok as u8);
        }
        c.send(&[(1, "slow")]).await;
        c.send(&echo(50..90)).await;
        for _ in 0..40 {
            let r = c.recv().await;
            assert!(r.request_id() >= 50, "{}", r.request_id());
            assert_eq!(frames::status(&r), Status::Ok as u8);
        }
        // Past every answered request's deadline: nothing.
        advance_ms(2_999).await;
        c.assert_quiet();
        // The slow request's timeout, at 3 s.
        advance_ms(1).await;
        let r = c.recv().await;
        assert_eq!(
            (r.request_id(), frames::status(&r)),
            (1, Status::Timeout as u8)
        );
    }

    /// The proxy's `metaproxy_buffered_bytes` gauge.
    fn buffered_bytes(p: &RunningServer) -> i64 {
        let text = p.handle().metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix("metaproxy_buffered_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metaproxy_buffered_bytes in\n{text}"))
    }

    #[tokio::test]
    async fn a_client_gone_between_delivery_and_flush_leaves_nothing_in_the_budget() {
        // One thread runs everything, so the order is fixed: the backend's answers and
        // the client's reset reach the proxy in one I/O-driver turn, answers first. The
        // upstream connection delivers the batch (16 answers: it then lets other tasks
        // run before it flushes its clients), the client's task sees the reset and ends
        // with the answers unwritten, and only then does the upstream connection flush
        // the client it delivered to. The answers (over 16 KiB, one budget step) must
        // not be counted again.
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = proxy(backend.local_addr().unwrap()).await;
        let mut c = Client::connect(&p).await;
        c.send(&(1..=16).map(|id| (id, "echo")).collect::<Vec<_>>())
            .await;
        let (mut upstream, _) = backend.accept().await.unwrap();
        let mut codec = KvCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < 16 {
            assert!(upstream.read_buf(&mut buf).await.unwrap() > 0);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                ids.push(m.request_id());
            }
        }
        let mut answers = BytesMut::new();
        for id in ids {
            answers.extend_from_slice(&frames::response(id, 0, &[], &[7; 1200]));
        }
        assert!(answers.len() > BUDGET_STEP && answers.len() < buffer_pool::BUFFER_SIZE);
        // No await from here to the close: the proxy runs only after both.
        upstream.writable().await.unwrap();
        assert_eq!(upstream.try_write(&answers).unwrap(), answers.len());
        // A reset, not a close: the client's task fails to write the answers and ends
        // with them still in its buffer.
        c.stream.set_zero_linger().unwrap();
        drop(c);
        settle().await;
        assert_eq!(buffered_bytes(&p), 0);
        drop(upstream);
    }
}
