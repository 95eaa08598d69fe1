//! The new process's side: ask the running process for its sockets, then for a drain.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    fds, read_message, write_message, HotRestartError, Message, WantedListener, PROTOCOL_VERSION,
};

/// How long the new process waits for each answer of the old one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets received from the old process.
pub(crate) struct Inherited {
    /// The old process's epoch (this one runs `epoch + 1`).
    pub(crate) old_epoch: u64,
    /// The old process's pid.
    pub(crate) old_pid: u32,
    /// Listener name (in the new config) → every socket of that listener.
    pub(crate) listeners: HashMap<String, Vec<std::net::TcpListener>>,
    /// The admin server's socket, when the address is unchanged.
    pub(crate) admin: Option<std::net::TcpListener>,
    /// The control socket.
    pub(crate) control: OwnedFd,
}

/// An open takeover conversation; [`Takeover::finish`] tells the old process to drain.
pub(crate) struct Takeover {
    stream: UnixStream,
    path: PathBuf,
}

impl Takeover {
    /// Sends `drain` and waits for `draining`.
    pub(crate) fn finish(mut self) -> Result<(), HotRestartError> {
        let path = self.path.clone();
        write_message(
            &mut self.stream,
            &Message::Drain {
                version: PROTOCOL_VERSION,
            },
        )
        .map_err(|source| HotRestartError::Io {
            path: path.clone(),
            source,
        })?;
        match read_message(&mut self.stream) {
            Ok(Message::Draining { .. }) => Ok(()),
            Ok(other) => Err(protocol(&path, format!("expected draining, got {other:?}"))),
            Err(e) => Err(protocol(&path, e.to_string())),
        }
    }
}

fn protocol(path: &Path, message: String) -> HotRestartError {
    HotRestartError::Protocol {
        path: path.to_path_buf(),
        message,
    }
}

/// Says hello over `stream` and receives the sockets of the listeners in `wanted`
/// (and of the admin server) that the old process has.
pub(crate) fn request_sockets(
    mut stream: UnixStream,
    path: &Path,
    wanted: Vec<WantedListener>,
    admin: Option<WantedListener>,
) -> Result<(Takeover, Inherited), HotRestartError> {
    let io_err = |source| HotRestartError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(io_err)?;
    write_message(
        &mut stream,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            listeners: wanted,
            admin,
        },
    )
    .map_err(io_err)?;
    let (old_pid, old_epoch, given, has_admin) = match read_message(&mut stream) {
        Ok(Message::Sockets {
            pid,
            epoch,
            listeners,
            admin,
            ..
        }) => (pid, epoch, listeners, admin),
        Ok(Message::Refused { reason, .. }) => {
            return Err(HotRestartError::Refused {
                path: path.to_path_buf(),
                reason,
            })
        }
        Ok(other) => return Err(protocol(path, format!("expected sockets, got {other:?}"))),
        Err(e) => return Err(protocol(path, e.to_string())),
    };
    let listener_sockets: usize = given.iter().map(|g| g.sockets as usize).sum();
    let total = listener_sockets + usize::from(has_admin) + 1;
    if total > 1 << 16 {
        return Err(protocol(path, format!("{total} sockets announced")));
    }
    let mut received = fds::recv_fds(&stream, total).map_err(io_err)?.into_iter();
    let mut listeners = HashMap::new();
    for g in given {
        let sockets: Vec<std::net::TcpListener> = received
            .by_ref()
            .take(g.sockets as usize)
            .map(std::net::TcpListener::from)
            .collect();
        for s in &sockets {
            let local = s.local_addr().map_err(io_err)?;
            if local != g.local {
                return Err(protocol(
                    path,
                    format!(
                        "listener {:?}: received a socket bound to {local}, expected {}",
                        g.name, g.local
                    ),
                ));
            }
            s.set_nonblocking(true).map_err(io_err)?;
        }
        listeners.insert(g.name, sockets);
    }
    let admin = if has_admin {
        let s = received.next().map(std::net::TcpListener::from);
        if let Some(s) = &s {
            s.set_nonblocking(true).map_err(io_err)?;
        }
        s
    } else {
        None
    };
    let control = received
        .next()
        .ok_or_else(|| protocol(path, "no control socket received".to_owned()))?;
    Ok((
        Takeover {
            stream,
            path: path.to_path_buf(),
        },
        Inherited {
            old_epoch,
            old_pid,
            listeners,
            admin,
            control,
        },
    ))
}
