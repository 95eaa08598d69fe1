//! Listeners: bind (or adopt) a socket, accept, and run one task per connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::shared::ListenerCtx;

/// Binds `addr` with the options a proxy listener wants (`SO_REUSEADDR`, a deep backlog).
///
/// Hot restart will hand over already-bound sockets instead; see
/// [`tokio::net::TcpListener::from_std`].
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts until `drain` turns true. Connection tasks are tracked by `tracker`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    mut drain: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    loop {
        if *drain.borrow() {
            return;
        }
        tokio::select! {
            _ = drain.changed() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if ctx.active.load(Ordering::Relaxed) >= ctx.max_connections {
                        crate::observe::rate_limited!(tracing::Level::WARN, listener = %ctx.name, %peer, "max_connections reached; closing new connection");
                        drop(stream);
                        continue;
                    }
                    ctx.active.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.connections_total.inc();
                    ctx.metrics.connections_active.inc();
                    let ctx = ctx.clone();
                    let drain = drain.clone();
                    tracker.spawn(async move {
                        crate::downstream::serve(stream, ctx.clone(), drain).await;
                        ctx.metrics.connections_active.dec();
                        ctx.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    crate::observe::rate_limited!(tracing::Level::WARN, listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
