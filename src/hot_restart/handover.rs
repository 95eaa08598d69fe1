//! The running (old) process's side: serve takeover requests on the control socket.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{
    fds, read_message, write_message, ControlFile, GivenListener, Message, ReadError,
    WantedListener, PROTOCOL_VERSION,
};

/// How long the old process waits for the new one's `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for `drain` after handing the sockets over (the new
/// process binds its listeners and starts its workers in between).
const DRAIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A listener the running process can hand over: duplicates of its sockets.
pub(crate) struct OfferedListener {
    /// Name in this process's config.
    pub(crate) name: String,
    /// Configured `host:port`.
    pub(crate) address: String,
    /// Bound address.
    pub(crate) local: SocketAddr,
    /// Every socket of the listener (one per worker with per-core threading).
    pub(crate) sockets: Vec<OwnedFd>,
}

impl OfferedListener {
    /// Whether the new process's `wanted` listener is this one: same bound address, or
    /// for a configured port 0, the same name and configured address.
    fn matches(&self, wanted: &WantedListener) -> bool {
        if wanted.resolved.port() == 0 {
            wanted.name == self.name && wanted.address == self.address
        } else {
            wanted.resolved == self.local
        }
    }
}

/// Everything the running process can hand to its successor.
pub(crate) struct Offer {
    /// This process's epoch.
    pub(crate) epoch: u64,
    /// Its listeners.
    pub(crate) listeners: Vec<OfferedListener>,
    /// Its admin server's socket.
    pub(crate) admin: Option<OfferedListener>,
    /// A duplicate of the control socket itself.
    pub(crate) control: OwnedFd,
}

/// Asks the running server to stop accepting; the sender is answered once no accept
/// loop is left, and only then is the new process told `draining`.
pub(crate) type DrainRequest = oneshot::Sender<()>;

/// Controls the handover server of a running process.
pub(crate) struct HandoverHandle {
    /// Yields once a new process has taken the sockets over and asked for a drain.
    pub(crate) taken_over: mpsc::Receiver<DrainRequest>,
    stop: Option<oneshot::Sender<()>>,
    file: ControlFile,
    handed_over: Arc<AtomicBool>,
}

impl HandoverHandle {
    /// Stops serving takeovers; removes the socket file unless it was handed over.
    pub(crate) fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !self.handed_over.load(Ordering::Acquire) {
            self.file.remove_if_ours();
        }
    }
}

/// Serves takeover requests on `listener` until one succeeds or the handle closes it.
pub(crate) fn spawn_handover(
    listener: UnixListener,
    file: ControlFile,
    offer: Offer,
) -> std::io::Result<HandoverHandle> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let (taken_tx, taken_over) = mpsc::channel(1);
    let (stop_tx, stop_rx) = oneshot::channel();
    let handed_over = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve(
        listener,
        Arc::new(Mutex::new(Some(offer))),
        taken_tx,
        stop_rx,
        handed_over.clone(),
    ));
    Ok(HandoverHandle {
        taken_over,
        stop: Some(stop_tx),
        file,
        handed_over,
    })
}

async fn serve(
    listener: tokio::net::UnixListener,
    offer: Arc<Mutex<Option<Offer>>>,
    taken_over: mpsc::Sender<DrainRequest>,
    mut stop: oneshot::Receiver<()>,
    handed_over: Arc<AtomicBool>,
) {
    let busy = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = mpsc::channel::<bool>(1);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(handed) = done_rx.recv() => {
                if handed {
                    return;
                }
            }
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "hot restart: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (offer, done) = (offer.clone(), done_tx.clone());
                let (taken_over, handed_over) = (taken_over.clone(), handed_over.clone());
                let busy = busy.clone();
                tokio::task::spawn_blocking(move || {
                    let handed = exchange(stream, &offer, &taken_over, &handed_over, &busy);
                    let _ = done.blocking_send(handed);
                });
            }
        }
    }
}

fn prepare(stream: &UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    stream.set_write_timeout(Some(HELLO_TIMEOUT))
}

/// One takeover conversation; returns whether the sockets were handed over and the new
/// process asked for the drain.
fn exchange(
    mut stream: UnixStream,
    offer: &Mutex<Option<Offer>>,
    taken_over: &mpsc::Sender<DrainRequest>,
    handed_over: &AtomicBool,
    busy: &AtomicBool,
) -> bool {
    if let Err(e) = prepare(&stream) {
        tracing::warn!(error = %e, "hot restart: cannot set up the connection");
        return false;
    }
    let refuse = |stream: &mut UnixStream, reason: String| {
        tracing::warn!("hot restart: refusing a takeover: {reason}; this process keeps serving");
        let _ = write_message(
            stream,
            &Message::Refused {
                version: PROTOCOL_VERSION,
                reason,
            },
        );
        false
    };
    // Every connection is read until its hello, so that a mere probe of the socket
    // (a plain `run` checking whether a process is alive) never blocks a takeover.
    let (pid, wanted, wanted_admin) = match read_message(&mut stream) {
        Ok(Message::Hello {
            pid,
            listeners,
            admin,
            ..
        }) => (pid, listeners, admin),
        Ok(other) => return refuse(&mut stream, format!("expected hello, got {other:?}")),
        Err(e @ (ReadError::Version(_) | ReadError::Malformed(_))) => {
            return refuse(&mut stream, e.to_string())
        }
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!("hot restart: a process probed the socket and left");
            return false;
        }
        Err(e) => {
            tracing::warn!("hot restart: no hello from the new process: {e}");
            return false;
        }
    };
    if busy.swap(true, Ordering::AcqRel) {
        return refuse(
            &mut stream,
            "another takeover is already in progress".to_owned(),
        );
    }
    // This conversation owns the takeover now. Whenever it ends without a handover,
    // the next takeover may start at once: released before the last word is said.
    let release = || busy.store(false, Ordering::Release);
    let refuse_with = |stream: &mut UnixStream, reason: String| {
        release();
        refuse(stream, reason)
    };
    let mut guard = offer.lock().unwrap_or_else(|e| e.into_inner());
    let Some(offer) = guard.as_ref() else {
        return refuse_with(
            &mut stream,
            "this process has already been taken over".into(),
        );
    };
    let mut given = Vec::new();
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut taken = vec![false; offer.listeners.len()];
    for w in &wanted {
        let found = offer
            .listeners
            .iter()
            .enumerate()
            .find(|(i, o)| !taken[*i] && o.matches(w));
        if let Some((i, o)) = found {
            taken[i] = true;
            given.push(GivenListener {
                name: w.name.clone(),
                local: o.local,
                sockets: o.sockets.len() as u32,
            });
            fds.extend(o.sockets.iter().map(AsFd::as_fd));
        }
    }
    let admin = match (&offer.admin, &wanted_admin) {
        (Some(o), Some(w)) if o.matches(w) => {
            fds.extend(o.sockets.iter().map(AsFd::as_fd));
            true
        }
        _ => false,
    };
    fds.push(offer.control.as_fd());
    let reply = Message::Sockets {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        epoch: offer.epoch,
        listeners: given,
        admin,
    };
    if let Err(e) = write_message(&mut stream, &reply).and_then(|()| fds::send_fds(&stream, &fds)) {
        release();
        tracing::warn!(error = %e, new_pid = pid, "hot restart: cannot send the sockets; this process keeps serving");
        return false;
    }
    tracing::info!(
        new_pid = pid,
        sockets = fds.len(),
        "hot restart: handed the listening sockets to pid {pid}; waiting for it to accept"
    );
    let _ = stream.set_read_timeout(Some(DRAIN_REQUEST_TIMEOUT));
    match read_message(&mut stream) {
        Ok(Message::Drain { .. }) => {}
        Ok(other) => {
            return refuse_with(&mut stream, format!("expected drain, got {other:?}"));
        }
        Err(e) => {
            release();
            tracing::warn!(new_pid = pid, "hot restart: the takeover by pid {pid} was abandoned ({e}); this process keeps serving");
            return false;
        }
    }
    for (o, taken) in offer.listeners.iter().zip(&taken) {
        if !*taken {
            tracing::info!(listener = %o.name, address = %o.local, "hot restart: the new config has no listener on {}; closing it", o.local);
        }
    }
    // From here on the sockets belong to the new process: the socket file is its too.
    // Our duplicates close now, so that a listener the new process did not take is
    // closed once the accept loops have stopped.
    handed_over.store(true, Ordering::Release);
    guard.take();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    if taken_over.blocking_send(stopped_tx).is_ok() {
        // Answered once this process accepts no more, so that every connection made
        // after the new process hears `draining` reaches the new process.
        let _ = stopped_rx.blocking_recv();
    }
    let _ = write_message(
        &mut stream,
        &Message::Draining {
            version: PROTOCOL_VERSION,
        },
    );
    tracing::info!(
        new_pid = pid,
        "hot restart: pid {pid} accepts on the sockets now; draining"
    );
    true
}
