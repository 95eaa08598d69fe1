//! One client connection: sends the template with fresh ids, checks every reply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meta_protocol::{Codec, Message, MessageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

use super::report::{ErrorKind, Totals};
use super::workload::Workload;
use super::Shared;

/// Thrift sequence ids are `i32`: ids cycle through `1..=MAX_ID`.
const MAX_ID: u64 = i32::MAX as u64;

/// How one connection behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnConfig {
    /// This connection's index, `0..connections`.
    pub(crate) index: usize,
    /// All connections (to stagger fixed-rate schedules).
    pub(crate) connections: usize,
    /// Requests in flight at most.
    pub(crate) depth: usize,
    /// Fixed-rate mode: time between two intended sends on this connection.
    pub(crate) interval: Option<Duration>,
    /// No reply for this long with requests outstanding: timeout.
    pub(crate) timeout: Duration,
    /// When the run started.
    pub(crate) start: Instant,
}

type Outstanding = HashMap<u64, Instant, ahash::RandomState>;

/// Per-connection state that survives reconnects.
struct Conn {
    cfg: ConnConfig,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    totals: Totals,
    msg: Message,
    outstanding: Outstanding,
    next_id: u64,
    /// Fixed-rate mode: the intended send time of the next request.
    next_due: Option<Instant>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// Why a connection ended early.
struct Failure {
    kind: ErrorKind,
    message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
    }
}

/// Runs one connection until sending is over and every request is answered (or lost),
/// reconnecting after failures. Returns its counters.
pub(crate) async fn run_connection(
    cfg: ConnConfig,
    target: SocketAddr,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
) -> Totals {
    let msg = workload.template().clone();
    let mut conn = Conn {
        cfg,
        next_due: cfg.interval.map(|iv| {
            // Stagger connections evenly over one interval.
            cfg.start + iv.mul_f64(cfg.index as f64 / cfg.connections as f64)
        }),
        workload,
        shared,
        totals: Totals::new(),
        msg,
        outstanding: HashMap::with_capacity_and_hasher(cfg.depth, ahash::RandomState::new()),
        next_id: 1,
        rbuf: BytesMut::with_capacity(64 * 1024),
        wbuf: BytesMut::with_capacity(64 * 1024),
    };
    let mut failing_since: Option<Instant> = None;
    loop {
        if conn.shared.is_stopped(Instant::now()) && conn.outstanding.is_empty() {
            break;
        }
        let mut stream = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                conn.totals
                    .record_error(ErrorKind::Connect, 1, Some(message.clone()));
                if let Ok(mut last) = conn.shared.last_connect_error.lock() {
                    *last = Some(message);
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= conn.cfg.timeout || conn.shared.is_stopped(Instant::now()) {
                    // Give the budget back to nobody: this connection is done.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        failing_since = None;
        conn.shared.connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut codec = match conn.workload.client_codec() {
            Ok(c) => c,
            Err(e) => {
                conn.totals.record_error(ErrorKind::Internal, 1, Some(e));
                break;
            }
        };
        conn.rbuf.clear();
        conn.wbuf.clear();
        match conn.pump(&mut stream, codec.as_mut()).await {
            Ok(()) => break,
            Err(f) => {
                let lost = conn.outstanding.len() as u64;
                conn.outstanding.clear();
                match f.kind {
                    ErrorKind::Timeout | ErrorKind::Closed => {
                        conn.totals
                            .record_error(f.kind, lost.max(1), Some(f.message));
                    }
                    kind => {
                        conn.totals.record_error(kind, 1, Some(f.message));
                        conn.totals.record_error(
                            ErrorKind::Closed,
                            lost,
                            Some("requests lost with the connection".to_owned()),
                        );
                    }
                }
                conn.shared.done.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }
    conn.totals
}

impl Conn {
    /// Sends and receives on one open connection.
    async fn pump(&mut self, stream: &mut TcpStream, codec: &mut dyn Codec) -> Result<(), Failure> {
        let mut last_progress = Instant::now();
        let period = (self.cfg.timeout / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            let mut sending_over = false;
            while self.outstanding.len() < self.cfg.depth {
                let intended = match self.next_due {
                    Some(due) if due > now => break,
                    Some(due) => due,
                    None => now,
                };
                if !self.shared.take(now) {
                    sending_over = true;
                    break;
                }
                if self.outstanding.is_empty() {
                    last_progress = now;
                }
                let id = self.next_id;
                self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
                self.msg.set_request_id(id);
                codec
                    .encode(&self.msg, &mut self.wbuf)
                    .map_err(|e| fail(ErrorKind::Encode, e.to_string()))?;
                self.outstanding.insert(id, intended);
                if let (Some(due), Some(iv)) = (self.next_due.as_mut(), self.cfg.interval) {
                    *due += iv;
                }
            }
            if !sending_over && self.shared.is_stopped(now) {
                sending_over = true;
            }
            if !self.wbuf.is_empty() {
                stream
                    .write_all(&self.wbuf)
                    .await
                    .map_err(|e| fail(ErrorKind::Closed, e.to_string()))?;
                self.wbuf.clear();
            }
            if sending_over && self.outstanding.is_empty() {
                return Ok(());
            }
            let wait_for_due = match self.next_due {
                Some(due) if !sending_over && self.outstanding.len() < self.cfg.depth => {
                    sleep.as_mut().reset(due.into());
                    true
                }
                _ => false,
            };
            tokio::select! {
                biased;
                read = stream.read_buf(&mut self.rbuf) => {
                    match read {
                        Ok(0) => return Err(fail(ErrorKind::Closed, "connection closed by the peer")),
                        Err(e) => return Err(fail(ErrorKind::Closed, e.to_string())),
                        Ok(_) => {}
                    }
                    let n = self.on_readable(codec)?;
                    if n > 0 {
                        last_progress = Instant::now();
                        self.shared.done.fetch_add(n, Ordering::Relaxed);
                    }
                }
                () = &mut sleep, if wait_for_due => {}
                _ = tick.tick() => {
                    if !self.outstanding.is_empty() && last_progress.elapsed() >= self.cfg.timeout {
                        return Err(fail(
                            ErrorKind::Timeout,
                            format!("no reply for {:?}", self.cfg.timeout),
                        ));
                    }
                }
            }
        }
    }

    /// Decodes and checks every whole reply in the read buffer; returns how many
    /// requests were settled.
    fn on_readable(&mut self, codec: &mut dyn Codec) -> Result<u64, Failure> {
        let now = Instant::now();
        let mut settled = 0;
        loop {
            let reply = match codec.decode(&mut self.rbuf) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(settled),
                Err(e) => return Err(fail(ErrorKind::Decode, e.to_string())),
            };
            match reply.kind() {
                MessageKind::Response => {}
                // Heartbeat answers and unsolicited events carry no request.
                MessageKind::Event | MessageKind::Heartbeat => continue,
                kind => {
                    self.totals.record_error(
                        ErrorKind::UnexpectedMessage,
                        1,
                        Some(format!("received a {kind:?}")),
                    );
                    continue;
                }
            }
            let id = reply.request_id();
            let Some(sent) = self.outstanding.remove(&id) else {
                self.totals.record_error(
                    ErrorKind::UnknownId,
                    1,
                    Some(format!("reply with id {id} matches no outstanding request")),
                );
                continue;
            };
            settled += 1;
            match self.workload.check(&reply) {
                Ok(()) => self.totals.record_ok(now.saturating_duration_since(sent)),
                Err(kind) => self.totals.record_error(
                    kind,
                    1,
                    Some(format!(
                        "reply to request {id} ({} bytes)",
                        reply.frame().len()
                    )),
                ),
            }
        }
    }
}
