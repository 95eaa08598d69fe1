//! The state every listener, connection and the admin server share: the config
//! snapshot in force, the registries, metrics and limits ([`Shared`]), and what the
//! connections of one listener share ([`ListenerCtx`]). State only: the server
//! (`server.rs`) changes it, listeners and connections read it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meta_protocol::CodecRegistry;

use crate::budget::BufferBudget;
use crate::cluster::EndpointRegistry;
use crate::config::{Config, DynamicResources};
use crate::filter::FilterRegistry;
use crate::observe::metrics::{ListenerMetrics, Metrics};
use crate::snapshot::Snapshot;
use crate::upstream::Protocol;

/// State shared by every listener, connection and the admin server.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Bumped after each new `snapshot` is stored: a connection that saw the same
    /// number may keep using what it looked up in the snapshot (see
    /// `Downstream::current_listener`).
    pub(crate) generation: AtomicU64,
    pub(crate) codecs: CodecRegistry,
    pub(crate) filters: FilterRegistry,
    pub(crate) endpoints: EndpointRegistry,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) ready: AtomicBool,
    /// `limits.max_buffered_bytes` and its use.
    pub(crate) budget: Arc<BufferBudget>,
    /// Listeners as bound at start: name -> (address, codec, options) fingerprint.
    pub(crate) bound: std::sync::Mutex<HashMap<String, String>>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The two sources of the config in force: the base (file) config and the
    /// resources from a control plane. Changed only under `reload_lock`.
    pub(crate) layers: std::sync::Mutex<Layers>,
    /// How the base config is named in the provenance: `file` or `static`.
    pub(crate) base_source: &'static str,
}

/// The sources the config in force was merged from.
pub(crate) struct Layers {
    pub(crate) base: Config,
    pub(crate) dynamic: DynamicResources,
}

/// What every connection of a listener shares.
pub(crate) struct ListenerCtx {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: ListenerMetrics,
    pub(crate) idle_timeout: Duration,
    /// Replies waiting this long without the client reading any close the connection.
    pub(crate) write_timeout: Duration,
    /// A frame started must be complete within this.
    pub(crate) frame_timeout: Duration,
    /// Per connection and direction: reading pauses at this many buffered bytes.
    pub(crate) max_buffered_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) active: AtomicUsize,
    pub(crate) access_log: Option<crate::observe::AccessLogger>,
}
