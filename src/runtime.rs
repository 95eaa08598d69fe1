//! The threading model, behind one function so it can change.
//!
//! Today: tokio's multi-threaded work-stealing runtime with one worker per core. The
//! alternative (Envoy's model: one current-thread runtime per core, each owning its
//! connections from accept to close, listeners shared with `SO_REUSEPORT`) fits behind
//! the same function; the bench suite decides.

/// Builds the runtime the proxy runs on.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("metaproxy-worker")
        .build()
}
