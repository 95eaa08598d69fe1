//! Echo backends for the demo, the bench suite and tests: a small, fast server for any
//! registered codec that answers each decoded request through a [`Responder`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use metaproxy_cli::backend;
//! let server = backend::spawn(
//!     "127.0.0.1:0".parse().unwrap(),
//!     backend::dubbo_factory(),
//!     Default::default(),
//!     backend::dubbo_echo("v1"),
//! ).await?;
//! println!("dubbo echo backend on {}", server.addr());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use meta_protocol::{
    CodecContext, CodecFactory, CodecOptions, ConfiguredProtocol, Message, MessageKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Appends the answer to a decoded request (nothing for one-way calls).
pub type Responder = Arc<dyn Fn(&Message, &mut BytesMut) + Send + Sync>;

/// What a backend has seen.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Two-way requests answered.
    pub requests: AtomicU64,
    /// One-way requests received.
    pub one_way: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

impl BackendStats {
    /// Two-way requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// A running backend; stops when dropped.
pub struct Backend {
    addr: SocketAddr,
    stats: Arc<BackendStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Dubbo codec factory.
pub fn dubbo_factory() -> Arc<dyn CodecFactory> {
    Arc::new(metaproxy_dubbo::DubboCodecFactory)
}

/// The Thrift codec factory (auto-detects transport and protocol per connection).
pub fn thrift_factory() -> Arc<dyn CodecFactory> {
    Arc::new(metaproxy_thrift::ThriftCodecFactory)
}

/// Dubbo echo: answers with the first argument and the request's attachments plus
/// `backend: <name>`, and answers heartbeats.
pub fn dubbo_echo(name: &str) -> Responder {
    let name = name.to_owned();
    Arc::new(move |req: &Message, out: &mut BytesMut| {
        if let Some(frame) =
            metaproxy_dubbo::frames::echo_response_with_attachments(req, &[("backend", &name)])
        {
            out.extend_from_slice(&frame);
        }
    })
}

/// Thrift echo: answers a call with its payload in the same transport and protocol.
pub fn thrift_echo() -> Responder {
    Arc::new(|req: &Message, out: &mut BytesMut| {
        if let Err(e) = metaproxy_thrift::frames::echo_reply(req, out) {
            tracing::debug!(error = %e, "thrift echo backend cannot answer");
        }
    })
}

/// Binds `addr` and serves `factory`'s protocol configured with `options` (invalid
/// options are an `InvalidInput` error), answering through `responder`.
pub async fn spawn(
    addr: SocketAddr,
    factory: Arc<dyn CodecFactory>,
    options: CodecOptions,
    responder: Responder,
) -> std::io::Result<Backend> {
    let protocol: Arc<dyn ConfiguredProtocol> = factory
        .configure(&options)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .into();
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(BackendStats::default());
    let s = stats.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    s.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(stream, protocol.clone(), responder.clone(), s.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Backend { addr, stats, task })
}

async fn serve(
    mut stream: TcpStream,
    protocol: Arc<dyn ConfiguredProtocol>,
    responder: Responder,
    stats: Arc<BackendStats>,
) {
    let _ = stream.set_nodelay(true);
    let ctx = CodecContext::downstream(meta_protocol::DEFAULT_MAX_FRAME_SIZE);
    let Ok(mut codec) = protocol.new_codec(&ctx) else {
        return;
    };
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        match stream.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match codec.decode(&mut rbuf) {
                Ok(Some(msg)) => {
                    match msg.kind() {
                        MessageKind::Request => {
                            stats.requests.fetch_add(1, Ordering::Relaxed);
                        }
                        MessageKind::OneWay => {
                            stats.one_way.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    responder(&msg, &mut wbuf);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "echo backend: bad frame; closing");
                    return;
                }
            }
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}
