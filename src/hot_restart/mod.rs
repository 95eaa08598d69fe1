//! Hot restart: a new process takes the listening sockets over from the running one.
//!
//! The running process listens on the Unix socket `hot_restart.socket`. A process
//! started with `metaproxy run --takeover` (or [`crate::Server::take_over`]) connects
//! to it and speaks a small versioned protocol ([`PROTOCOL_VERSION`]):
//!
//! 1. new → old `hello`: its protocol version, pid, and the listeners it wants (name,
//!    configured address, resolved address) plus the admin address.
//! 2. old → new `sockets` (the matching listeners, how many sockets each has, whether
//!    the admin and control sockets follow), then the sockets themselves with
//!    `SCM_RIGHTS`; or `refused` with a reason (version mismatch, a takeover already in
//!    progress).
//! 3. The new process accepts on exactly those sockets, binds fresh only the listeners
//!    the old one did not have, then sends `drain`.
//! 4. old → new `draining`; the old process stops accepting, closes the listeners the
//!    new one did not take, serves its open connections until their clients close them
//!    or `drain_timeout` passes, and exits.
//!
//! Every message is a 4-byte big-endian length followed by that many bytes of JSON
//! (at most [`MAX_MESSAGE_BYTES`]); every message carries `version`. The contract for
//! operators is docs/HOT_RESTART.md.

mod fds;
mod handover;
mod takeover;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use handover::{spawn_handover, DrainRequest, HandoverHandle, Offer, OfferedListener};
pub(crate) use takeover::{request_sockets, Inherited};

/// The version of the protocol between an old and a new process. Both must speak the
/// same one; a mismatch is refused and the old process keeps serving.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest protocol message accepted, in bytes (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Test-only: when set (to anything), a process started with `--takeover` aborts right
/// after receiving the sockets and before telling the old process to drain, as a
/// binary that crashes mid-handover would. Never set it in production.
pub const TEST_ABORT_AFTER_SOCKETS_ENV: &str = "METAPROXY_TEST_ABORT_AFTER_TAKEOVER_SOCKETS";

/// Why a hot restart (or the hot-restart socket) failed.
#[derive(Debug, thiserror::Error)]
pub enum HotRestartError {
    /// `--takeover` without `hot_restart.socket` in the config.
    #[error("--takeover needs hot_restart.socket in the config")]
    NoSocketConfigured,
    /// Another process already serves the hot-restart socket.
    #[error("another metaproxy process is running on hot-restart socket {path}; start the new one with --takeover, or stop the running one first")]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The running process refused the takeover; it keeps serving.
    #[error("the running process on {path} refused the takeover: {reason}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// What it said.
        reason: String,
    },
    /// The two processes could not agree (bad message, version mismatch, wrong count).
    #[error("hot restart over {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A system call failed.
    #[error("hot restart over {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Binding the listeners failed after the sockets were received.
    #[error(transparent)]
    Bind(#[from] crate::BindError),
}

/// One listener the new process asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct WantedListener {
    /// Listener name in the new config.
    pub(crate) name: String,
    /// The configured `host:port`.
    pub(crate) address: String,
    /// What it resolves to.
    pub(crate) resolved: SocketAddr,
}

/// One listener the old process hands over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct GivenListener {
    /// Listener name in the new config.
    pub(crate) name: String,
    /// The bound address.
    pub(crate) local: SocketAddr,
    /// How many sockets follow for it (one per old worker with per-core threading).
    pub(crate) sockets: u32,
}

/// The protocol's messages.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// new → old: what it wants.
    Hello {
        version: u32,
        pid: u32,
        listeners: Vec<WantedListener>,
        admin: Option<WantedListener>,
    },
    /// old → new: what follows with `SCM_RIGHTS`, in order: each listener's sockets,
    /// then the admin socket (when `admin`), then the control socket.
    Sockets {
        version: u32,
        pid: u32,
        epoch: u64,
        listeners: Vec<GivenListener>,
        admin: bool,
    },
    /// old → new: no takeover; the old process keeps serving.
    Refused { version: u32, reason: String },
    /// new → old: the new process accepts on the sockets; drain now.
    Drain { version: u32 },
    /// old → new: draining.
    Draining { version: u32 },
}

/// Why a message could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Version(u64),
    Malformed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "the other process closed the connection")
            }
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Version(v) => write!(
                f,
                "hot-restart protocol version mismatch: the other process speaks version {v}, this one version {PROTOCOL_VERSION}"
            ),
            ReadError::Malformed(m) => write!(f, "malformed message: {m}"),
        }
    }
}

/// Writes one length-prefixed JSON message.
pub(crate) fn write_message(stream: &mut UnixStream, message: &Message) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// Reads one message, checking its `version` before anything else.
pub(crate) fn read_message(stream: &mut UnixStream) -> Result<Message, ReadError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(ReadError::Io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(ReadError::Malformed(format!(
            "{len} bytes, over the limit of {MAX_MESSAGE_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(ReadError::Io)?;
    parse_message(&body)
}

fn parse_message(body: &[u8]) -> Result<Message, ReadError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ReadError::Malformed(e.to_string()))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => return Err(ReadError::Version(v)),
        None => return Err(ReadError::Malformed("no version".to_owned())),
    }
    serde_json::from_value(value).map_err(|e| ReadError::Malformed(e.to_string()))
}

/// The hot-restart socket file this process created, to remove at exit if it is still
/// ours (same inode) and was not handed over.
#[derive(Clone, Debug)]
pub(crate) struct ControlFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl ControlFile {
    /// Removes the socket file when it is still the one this process created.
    pub(crate) fn remove_if_ours(&self) {
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    fn of(path: &Path) -> io::Result<ControlFile> {
        let meta = std::fs::metadata(path)?;
        Ok(ControlFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Removes a freshly created socket file when dropped, unless told to keep it (a start
/// that fails after creating the socket leaves no file behind).
pub(crate) struct RemoveOnDrop(Option<ControlFile>);

impl RemoveOnDrop {
    /// Guards `file`.
    pub(crate) fn new(file: &ControlFile) -> Self {
        RemoveOnDrop(Some(file.clone()))
    }

    /// The start succeeded: the file stays.
    pub(crate) fn keep(guard: &mut Self) {
        guard.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            file.remove_if_ours();
        }
    }
}

/// Connects to a running process; `None` when nobody listens (no file, or a stale file
/// left by a process that is gone).
pub(crate) fn connect(path: &Path) -> Result<Option<UnixStream>, HotRestartError> {
    match UnixStream::connect(path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(HotRestartError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates the hot-restart socket at `path` (mode 0600). A file left by a crashed
/// process is replaced; a live process on it is an error.
pub(crate) fn bind_control(path: &Path) -> Result<(UnixListener, ControlFile), HotRestartError> {
    let io_err = |source| HotRestartError::Io {
        path: path.to_path_buf(),
        source,
    };
    if connect(path)?.is_some() {
        return Err(HotRestartError::AlreadyRunning {
            path: path.to_path_buf(),
        });
    }
    if path.exists() {
        tracing::warn!(path = %path.display(), "replacing a stale hot-restart socket left by a process that is gone");
    }
    // Bind beside the final name, restrict it, then rename over: the socket appears at
    // `path` already with mode 0600, and a stale file is replaced atomically.
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metaproxy.sock".to_owned());
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(io_err)?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(io_err(e));
    }
    let file = ControlFile::of(path).map_err(io_err)?;
    Ok((listener, file))
}

/// The control socket as received from the old process, with the file it is bound to.
pub(crate) fn adopt_control(
    path: &Path,
    fd: OwnedFd,
) -> Result<(UnixListener, ControlFile), HotRestartError> {
    let io_err = |source| HotRestartError::Io {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::from(fd);
    let file = ControlFile::of(path).map_err(io_err)?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("metaproxy-hr-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn messages_round_trip_and_a_version_mismatch_is_named() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            pid: 7,
            listeners: vec![WantedListener {
                name: "in".into(),
                address: "127.0.0.1:0".into(),
                resolved: "127.0.0.1:0".parse().unwrap(),
            }],
            admin: None,
        };
        write_message(&mut a, &hello).unwrap();
        assert_eq!(read_message(&mut b).unwrap(), hello);
        let future = br#"{"type":"hello","version":2,"whatever":true}"#;
        a.write_all(&(future.len() as u32).to_be_bytes()).unwrap();
        a.write_all(future).unwrap();
        let err = read_message(&mut b).unwrap_err();
        assert!(matches!(err, ReadError::Version(2)), "{err}");
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn an_oversized_message_is_refused_without_reading_it() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(u32::MAX).to_be_bytes()).unwrap();
        assert!(matches!(read_message(&mut b), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn control_socket_is_private_replaces_a_stale_file_and_refuses_a_live_one() {
        let dir = temp_dir("control");
        let path = dir.join("hr.sock");
        std::fs::write(&path, b"stale").unwrap();
        let (listener, file) = bind_control(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind_control(&path).unwrap_err();
        assert!(
            matches!(err, HotRestartError::AlreadyRunning { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--takeover"), "{err}");
        drop(listener);
        // Gone but the file is left behind, as after a crash: replaced.
        let (_again, file2) = bind_control(&path).unwrap();
        file.remove_if_ours();
        assert!(path.exists(), "a newer socket file must not be removed");
        file2.remove_if_ours();
        assert!(!path.exists());
    }
}
