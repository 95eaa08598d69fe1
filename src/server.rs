//! The proxy server: shared state, binding, config reload and drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use meta_protocol::CodecRegistry;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use std::os::fd::AsFd;

use tokio::net::TcpListener;

use crate::budget::BufferBudget;
use crate::cluster::EndpointRegistry;
use crate::config::{
    self, Config, ConfigError, DynamicResources, Problem, Provenance, DEFAULT_DRAIN_TIMEOUT,
};
use crate::filter::FilterRegistry;
use crate::hot_restart::{
    self, DrainRequest, HandoverHandle, HotRestartError, Inherited, Offer, OfferedListener,
};
use crate::listener;
use crate::observe::metrics::Metrics;
use crate::observe::{AccessLogTarget, AccessLogger, AdminHandler};
use crate::runtime::Threading;
use crate::shared::{Layers, ListenerCtx, Shared};
use crate::snapshot::{self, Snapshot};
use crate::upstream::Protocol;

/// What a swap replaces.
enum Change {
    /// A new base config (reload of the file, or [`ServerHandle::apply`]).
    Base(Box<Config>),
    /// New resources from a control plane.
    Dynamic(DynamicResources),
}

/// The outcome of a successful reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Warnings about the new config (for example mutations a listener cannot carry).
    pub warnings: Vec<String>,
    /// Listener changes that take effect only after a restart.
    pub restart_required: Vec<String>,
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config reloaded")?;
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        for r in &self.restart_required {
            write!(f, "\nrestart required: {r}")?;
        }
        Ok(())
    }
}

fn listener_fingerprint(l: &config::ListenerConfig) -> String {
    format!(
        "{}|{}|{:?}|{}",
        l.address, l.codec, l.options, l.max_frame_size
    )
}

impl Shared {
    /// Compiles `config` and, only when all of it compiled, connects it to live state
    /// (endpoints, pool limits, metric series, the buffer budget): a rejected config
    /// changes nothing.
    fn compile(&self, config: Config) -> Result<(Snapshot, Vec<Problem>), Vec<Problem>> {
        let previous = self.snapshot.load();
        let (snap, warnings) = snapshot::build(
            Arc::new(config),
            &self.codecs,
            &self.filters,
            &self.endpoints,
            &self.metrics,
            Some(&previous),
        )?;
        self.budget.set_max(snap.config.limits.max_buffered_bytes);
        Ok((snap, warnings))
    }

    /// Validates `config` as the new base config, merges the control plane's resources
    /// into it and swaps the result in. In-flight requests finish on the old snapshot.
    pub(crate) async fn apply(&self, config: Config) -> Result<ReloadOutcome, Vec<Problem>> {
        self.swap(Change::Base(Box::new(config))).await
    }

    /// Merges `change` with the other source, validates, compiles and swaps the result
    /// in; on failure nothing changes.
    async fn swap(&self, change: Change) -> Result<ReloadOutcome, Vec<Problem>> {
        let _guard = self.reload_lock.lock().await;
        let is_reload = matches!(change, Change::Base(_));
        let (base, dynamic, xds_changed) = {
            let layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
            match change {
                Change::Base(base) => {
                    let xds_changed = base.xds != layers.base.xds;
                    (*base, layers.dynamic.clone(), xds_changed)
                }
                Change::Dynamic(dynamic) => (layers.base.clone(), dynamic, false),
            }
        };
        let merged = config::merge(&base, self.base_source, &dynamic);
        let result = self.compile(merged.config);
        let (mut snap, mut warnings) = match result {
            Ok(ok) => ok,
            Err(problems) => {
                if is_reload {
                    self.metrics.config_reload(false);
                }
                return Err(problems);
            }
        };
        snap.provenance = merged.provenance;
        warnings.extend(merged.shadowed.into_iter().map(|message| Problem {
            field: "xds".to_owned(),
            message,
        }));
        let mut restart_required = Vec::new();
        if xds_changed {
            restart_required.push(
                "the xds section changed; the control plane client keeps its settings until restart"
                    .to_owned(),
            );
        }
        {
            let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            let old = self.snapshot.load();
            for (name, fp) in bound.iter() {
                match snap.config.listeners.iter().find(|l| &l.name == name) {
                    None => {
                        restart_required.push(format!("listener {name:?} was removed; it keeps serving with its old routes until restart"));
                        if let Some(rt) = old.listener(name) {
                            snap.listeners.insert(name.clone(), rt.clone());
                        }
                    }
                    Some(l) if &listener_fingerprint(l) != fp => restart_required.push(format!(
                        "listener {name:?} changed its address, codec, options or max_frame_size; routes are updated, the rest needs a restart"
                    )),
                    Some(_) => {}
                }
            }
            for l in &snap.config.listeners {
                if !bound.contains_key(&l.name) {
                    restart_required.push(format!("new listener {:?} starts on restart", l.name));
                }
            }
        }
        self.snapshot.store(Arc::new(snap));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        *self.layers.lock().unwrap_or_else(|e| e.into_inner()) = Layers { base, dynamic };
        if is_reload {
            self.metrics.config_reload(true);
        }
        Ok(ReloadOutcome {
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            restart_required,
        })
    }

    /// Re-reads the config file and applies it.
    pub(crate) async fn reload_file(&self) -> Result<ReloadOutcome, String> {
        let Some(path) = &self.config_path else {
            return Err(
                "the server was built from a value (Server::new), not a file: there is nothing to re-read; use ServerHandle::apply".to_owned(),
            );
        };
        let config = match config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reload(false);
                return Err(e.to_string());
            }
        };
        self.apply(config).await.map_err(|problems| {
            ConfigError::Invalid {
                path: path.clone(),
                problems,
            }
            .to_string()
        })
    }
}

/// A proxy built from a config, not yet bound.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Validates `config` and prepares the server. `codecs` must hold every codec the
    /// listeners name; filters come from [`FilterRegistry::builtin`].
    ///
    /// A server built from a value has no file to re-read: change its config with
    /// [`ServerHandle::apply`]; [`ServerHandle::reload`], SIGHUP and `POST /reload`
    /// answer with an error and change nothing. Build the config in code or from text
    /// with [`Config::from_yaml_str`]; listeners on port 0 bind ephemeral ports, which
    /// [`RunningServer::local_addr`] reports.
    pub fn new(config: Config, codecs: CodecRegistry) -> Result<Server, ConfigError> {
        Self::build(config, codecs, FilterRegistry::builtin(), None)
    }

    /// Loads and validates the config file at `path`; SIGHUP and `POST /reload` re-read it.
    pub fn from_file(path: &Path, codecs: CodecRegistry) -> Result<Server, ConfigError> {
        let config = config::load(path)?;
        Self::build(
            config,
            codecs,
            FilterRegistry::builtin(),
            Some(path.to_path_buf()),
        )
    }

    /// Like [`Server::new`], with the filters of `filters` (start from
    /// [`FilterRegistry::builtin`] and register your own).
    pub fn with_filters(
        config: Config,
        codecs: CodecRegistry,
        filters: FilterRegistry,
    ) -> Result<Server, ConfigError> {
        Self::build(config, codecs, filters, None)
    }

    /// Like [`Server::from_file`], with the filters of `filters`; reloads use them too.
    pub fn from_file_with_filters(
        path: &Path,
        codecs: CodecRegistry,
        filters: FilterRegistry,
    ) -> Result<Server, ConfigError> {
        let config = config::load(path)?;
        Self::build(config, codecs, filters, Some(path.to_path_buf()))
    }

    fn build(
        config: Config,
        codecs: CodecRegistry,
        filters: FilterRegistry,
        path: Option<PathBuf>,
    ) -> Result<Server, ConfigError> {
        let metrics = Metrics::new();
        let endpoints = EndpointRegistry::default();
        let origin = path.clone().unwrap_or_else(|| PathBuf::from("<config>"));
        let base_source = if path.is_some() { "file" } else { "static" };
        let merged = config::merge(&config, base_source, &DynamicResources::default());
        let (mut snap, warnings) = snapshot::build(
            Arc::new(merged.config),
            &codecs,
            &filters,
            &endpoints,
            &metrics,
            None,
        )
        .map_err(|problems| ConfigError::Invalid {
            path: origin,
            problems,
        })?;
        snap.provenance = merged.provenance;
        let budget = Arc::new(BufferBudget::new(
            snap.config.limits.max_buffered_bytes,
            metrics.buffered_bytes(),
        ));
        for w in &warnings {
            tracing::warn!("config: {w}");
        }
        Ok(Server {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snap),
                generation: std::sync::atomic::AtomicU64::new(0),
                codecs,
                filters,
                endpoints,
                metrics,
                config_path: path,
                ready: AtomicBool::new(false),
                budget,
                bound: std::sync::Mutex::new(HashMap::new()),
                reload_lock: tokio::sync::Mutex::new(()),
                layers: std::sync::Mutex::new(Layers {
                    base: config,
                    dynamic: DynamicResources::default(),
                }),
                base_source,
            }),
        })
    }

    /// Binds every listener (and the admin server), logging one `listening` line each.
    /// Must be called inside a tokio runtime.
    pub async fn bind(self) -> Result<RunningServer, BindError> {
        self.bind_with(Threading::WorkStealing { workers: 0 }).await
    }

    /// Binds like [`Server::bind`] with an explicit threading model. With
    /// [`Threading::WorkStealing`] connections run on the calling runtime (its worker
    /// count is the caller's); with [`Threading::PerCore`] each listener gets one
    /// `SO_REUSEPORT` socket per worker thread, and each worker runs its own
    /// single-threaded runtime with its own connections and upstream pools.
    ///
    /// With `hot_restart.socket` configured, the socket is created (mode 0600) and
    /// serves takeovers; when another process already serves it, binding fails.
    pub async fn bind_with(self, threading: Threading) -> Result<RunningServer, BindError> {
        self.bind_inner(threading, None).await
    }

    /// Hot restart: takes the listening sockets (and the admin socket) over from the
    /// process running on the config's `hot_restart.socket`, accepts on exactly those
    /// sockets, binds fresh only the listeners that process did not have, then tells it
    /// to drain. Without a running process, binds fresh sockets (and logs so). When the
    /// running process refuses, or anything fails before the drain request, it keeps
    /// serving untouched. See docs/HOT_RESTART.md.
    pub async fn take_over(self, threading: Threading) -> Result<RunningServer, HotRestartError> {
        let config = self.shared.snapshot.load().config.clone();
        let path: PathBuf = config
            .hot_restart
            .as_ref()
            .and_then(|h| h.socket.as_deref())
            .ok_or(HotRestartError::NoSocketConfigured)?
            .into();
        let Some(stream) = hot_restart::connect(&path)? else {
            tracing::info!(
                path = %path.display(),
                "--takeover: no running process on {}; binding fresh sockets",
                path.display()
            );
            return Ok(self.bind_inner(threading, None).await?);
        };
        let wanted = |name: &str, address: &str| {
            config::resolve_address(address)
                .map(|resolved| hot_restart::WantedListener {
                    name: name.to_owned(),
                    address: address.to_owned(),
                    resolved,
                })
                .map_err(|e| BindError {
                    listener: name.to_owned(),
                    address: address.to_owned(),
                    source: std::io::Error::other(e),
                })
        };
        let listeners = config
            .listeners
            .iter()
            .map(|l| wanted(&l.name, &l.address))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = config
            .admin
            .as_ref()
            .map(|a| wanted("admin", &a.address))
            .transpose()?;
        let (p, io_err) = (path.clone(), |e: tokio::task::JoinError| {
            HotRestartError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        });
        let (takeover, inherited) = tokio::task::spawn_blocking(move || {
            hot_restart::request_sockets(stream, &p, listeners, admin)
        })
        .await
        .map_err(io_err)??;
        let (old_pid, old_epoch) = (inherited.old_pid, inherited.old_epoch);
        let received: usize = inherited.listeners.values().map(Vec::len).sum();
        tracing::info!(
            old_pid,
            old_epoch,
            "hot restart: received {received} listening sockets from pid {old_pid}"
        );
        if std::env::var_os(hot_restart::TEST_ABORT_AFTER_SOCKETS_ENV).is_some() {
            tracing::error!(
                "{} is set: aborting mid-handover (test only)",
                hot_restart::TEST_ABORT_AFTER_SOCKETS_ENV
            );
            std::process::abort();
        }
        let running = self.bind_inner(threading, Some(inherited)).await?;
        match tokio::task::spawn_blocking(move || takeover.finish())
            .await
            .map_err(io_err)
        {
            Ok(Ok(())) => tracing::info!(
                old_pid,
                epoch = running.epoch,
                "hot restart: took over from pid {old_pid}; it is draining"
            ),
            Ok(Err(e)) | Err(e) => tracing::warn!(
                old_pid,
                "hot restart: accepting, but pid {old_pid} did not confirm its drain: {e}"
            ),
        }
        Ok(running)
    }

    async fn bind_inner(
        self,
        threading: Threading,
        inherited: Option<Inherited>,
    ) -> Result<RunningServer, BindError> {
        let per_core = match threading {
            Threading::PerCore { workers } => Some(workers.max(1)),
            Threading::WorkStealing { .. } => None,
        };
        let mut per_worker: Vec<Vec<WorkerSocket>> =
            (0..per_core.unwrap_or(0)).map(|_| Vec::new()).collect();
        let shared = self.shared;
        let snap = shared.snapshot.load_full();
        let (epoch, mut inherited_listeners, mut inherited_admin, inherited_control) =
            match inherited {
                Some(i) => (
                    i.old_epoch.saturating_add(1),
                    i.listeners,
                    i.admin,
                    Some(i.control),
                ),
                None => (0, HashMap::new(), None, None),
            };
        // The hot-restart socket first: a second process refuses before binding anything.
        let mut created_control = None;
        let control = match snap
            .config
            .hot_restart
            .as_ref()
            .and_then(|h| h.socket.as_deref())
        {
            None => None,
            Some(path) => {
                let path = Path::new(path);
                // A received control socket is the one listening on this very path
                // (take_over connected through it); it was bound under a temporary
                // name and renamed, so its own address cannot tell.
                let fresh = inherited_control.is_none();
                let result = match inherited_control {
                    Some(fd) => hot_restart::adopt_control(path, fd),
                    None => hot_restart::bind_control(path),
                };
                let (listener, file) = result.map_err(|e| BindError {
                    listener: "hot_restart".to_owned(),
                    address: path.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
                if fresh {
                    // Should a listener fail to bind below, the file created here goes.
                    created_control = Some(hot_restart::RemoveOnDrop::new(&file));
                }
                Some((listener, file))
            }
        };
        shared.metrics.set_hot_restart_epoch(epoch);
        let (drain_tx, drain_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let mut addrs = Vec::new();
        let mut offered = Vec::new();
        let mut protocol_ids: HashMap<String, u64> = HashMap::new();
        let accepting = TaskTracker::new();
        for l in &snap.config.listeners {
            let bind_err = |source: std::io::Error| BindError {
                listener: l.name.clone(),
                address: l.address.clone(),
                source,
            };
            let addr = config::resolve_address(&l.address)
                .map_err(|e| bind_err(std::io::Error::other(e)))?;
            let (mut sockets, inherited) = match inherited_listeners.remove(&l.name) {
                Some(sockets) if !sockets.is_empty() => (sockets, true),
                _ => (bind_fresh(addr, per_core).map_err(bind_err)?, false),
            };
            let local = sockets[0].local_addr().map_err(bind_err)?;
            let factory = shared
                .codecs
                .get(&l.codec)
                .map_err(|e| bind_err(std::io::Error::other(e)))?;
            let fp = listener_fingerprint(l);
            let next_id = protocol_ids.len() as u64;
            let id = *protocol_ids
                .entry(format!("{}|{:?}|{}", l.codec, l.options, l.max_frame_size))
                .or_insert(next_id);
            let protocol = Protocol::new(id, factory.clone(), l.options.clone(), l.max_frame_size)
                .map_err(|e| bind_err(std::io::Error::other(e)))?;
            let access_log = match &l.access_log {
                None => None,
                Some(log) => {
                    let target = if log.path == "stdout" || log.path == "-" {
                        AccessLogTarget::stdout()
                    } else {
                        AccessLogTarget::file(&log.path)
                            .map_err(|e| bind_err(std::io::Error::other(e)))?
                    };
                    Some(AccessLogger::spawn(target).0)
                }
            };
            let ctx = Arc::new(ListenerCtx {
                access_log,
                name: l.name.as_str().into(),
                protocol: Arc::new(protocol),
                shared: shared.clone(),
                metrics: shared.metrics.listener(&l.name),
                idle_timeout: l.idle_timeout.get(),
                write_timeout: l.write_timeout.get(),
                frame_timeout: l.frame_timeout.get(),
                max_buffered_bytes: l.max_buffered_bytes,
                max_connections: l.max_connections,
                active: AtomicUsize::new(0),
            });
            if control.is_some() {
                offered.push(OfferedListener {
                    name: l.name.clone(),
                    address: l.address.clone(),
                    local,
                    sockets: sockets
                        .iter()
                        .map(|s| s.as_fd().try_clone_to_owned())
                        .collect::<Result<_, _>>()
                        .map_err(bind_err)?,
                });
            }
            let count = sockets.len();
            tracing::info!(listener = %l.name, address = %local, codec = %l.codec, sockets = count, inherited, "listening on {local}");
            shared
                .bound
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(l.name.clone(), fp);
            addrs.push((l.name.clone(), local));
            match per_core {
                None => {
                    for socket in sockets {
                        let socket = TcpListener::from_std(socket).map_err(bind_err)?;
                        accepting.spawn(listener::accept_loop(
                            socket,
                            ctx.clone(),
                            drain_rx.clone(),
                            tracker.clone(),
                        ));
                    }
                }
                Some(workers) => {
                    // Every socket gets a worker (socket j goes to worker j mod workers)
                    // and every worker gets a socket (workers beyond the socket count
                    // share one), so no accept queue is left without an accept loop.
                    for extra in count..workers {
                        let shared_socket = sockets[extra % count].try_clone().map_err(bind_err)?;
                        sockets.push(shared_socket);
                    }
                    for (j, socket) in sockets.into_iter().enumerate() {
                        per_worker[j % workers].push(WorkerSocket {
                            socket,
                            ctx: ctx.clone(),
                            accepting: accepting.token(),
                        });
                    }
                }
            }
        }
        for (name, _) in inherited_listeners {
            tracing::warn!(listener = %name, "hot restart: received sockets for a listener this config does not have; closing them");
        }
        let (stop_workers, stop_rx) = watch::channel(false);
        let mut worker_threads = Vec::new();
        // Worker i runs as id i + 1 (0 is the main runtime): announced before any of
        // them starts, so an endpoint's per-worker pool slots have room for all.
        crate::runtime::reserve_worker_ids(per_worker.len() + 1);
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let (drain, tracker, mut stop) = (drain_rx.clone(), tracker.clone(), stop_rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("metaproxy-worker-{i}"))
                .spawn(move || run_worker(i, sockets, drain, tracker, &mut stop));
            match spawned {
                Ok(thread) => worker_threads.push(thread),
                Err(source) => {
                    return Err(BindError {
                        listener: "worker".to_owned(),
                        address: format!("worker {i}"),
                        source,
                    })
                }
            }
        }
        let handle = ServerHandle {
            shared: shared.clone(),
            drain_tx: Arc::new(drain_tx),
        };
        let mut admin_addr = None;
        let mut admin_stop = None;
        let mut offered_admin = None;
        if let Some(admin) = &snap.config.admin {
            let bind_err = |source: std::io::Error| BindError {
                listener: "admin".to_owned(),
                address: admin.address.clone(),
                source,
            };
            let addr = config::resolve_address(&admin.address)
                .map_err(|e| bind_err(std::io::Error::other(e)))?;
            let socket = match inherited_admin.take() {
                Some(socket) => TcpListener::from_std(socket).map_err(bind_err)?,
                None => TcpListener::bind(addr).await.map_err(bind_err)?,
            };
            if control.is_some() {
                offered_admin = Some(OfferedListener {
                    name: "admin".to_owned(),
                    address: admin.address.clone(),
                    local: socket.local_addr().map_err(bind_err)?,
                    sockets: vec![socket.as_fd().try_clone_to_owned().map_err(bind_err)?],
                });
            }
            let local = socket.local_addr().map_err(bind_err)?;
            tracing::info!(address = %local, "admin listening on {local}");
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let token = match &admin.token_file {
                None => None,
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            bind_err(std::io::Error::other(format!(
                                "admin.token_file {path}: {e}"
                            )))
                        })?
                        .trim()
                        .to_owned(),
                ),
            };
            if !local.ip().is_loopback() {
                tracing::warn!(address = %local, token = token.is_some(), "the admin server is reachable beyond this host");
            }
            let bridge: Arc<dyn AdminHandler> = Arc::new(AdminBridge {
                handle: handle.clone(),
                token,
            });
            tokio::spawn(crate::observe::serve(socket, bridge, async move {
                let _ = stop_rx.await;
            }));
            admin_addr = Some(local);
            admin_stop = Some(stop_tx);
        }
        if let Some(created) = created_control.as_mut() {
            hot_restart::RemoveOnDrop::keep(created);
        }
        let handover = match control {
            None => None,
            Some((control, file)) => {
                let path = snap
                    .config
                    .hot_restart
                    .as_ref()
                    .and_then(|h| h.socket.clone())
                    .unwrap_or_default();
                let bind_err = |source| BindError {
                    listener: "hot_restart".to_owned(),
                    address: path.clone(),
                    source,
                };
                let offer = Offer {
                    epoch,
                    listeners: offered,
                    admin: offered_admin,
                    control: control.as_fd().try_clone_to_owned().map_err(bind_err)?,
                };
                Some(hot_restart::spawn_handover(control, file, offer).map_err(bind_err)?)
            }
        };
        if epoch > 0 {
            tracing::info!(epoch, "hot restart epoch {epoch}");
        }
        shared.ready.store(true, Ordering::Relaxed);
        Ok(RunningServer {
            epoch,
            handover,
            handle,
            addrs,
            admin_addr,
            admin_stop,
            tracker,
            accepting,
            stop_workers,
            worker_threads,
        })
    }
}

/// Binds a listener's sockets: one, or with per-core threading one `SO_REUSEPORT`
/// socket per worker (all on the address the first one got, for port 0).
fn bind_fresh(
    addr: SocketAddr,
    per_core: Option<usize>,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = listener::bind(addr, per_core.is_some())?.into_std()?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..per_core.unwrap_or(1) {
        sockets.push(listener::bind(local, true)?.into_std()?);
    }
    Ok(sockets)
}

/// A listening socket a per-core worker accepts on.
struct WorkerSocket {
    socket: std::net::TcpListener,
    ctx: Arc<ListenerCtx>,
    /// Held while the worker's accept loop runs (see [`RunningServer::stop_accepting`]).
    accepting: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// One per-core worker: a single-threaded runtime accepting on its own sockets until
/// the server stops.
fn run_worker(
    index: usize,
    sockets: Vec<WorkerSocket>,
    drain: watch::Receiver<bool>,
    tracker: TaskTracker,
    stop: &mut watch::Receiver<bool>,
) {
    crate::runtime::set_worker_id(index as u16 + 1);
    let rt = match crate::runtime::proxy_runtime(&mut tokio::runtime::Builder::new_current_thread())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        for WorkerSocket {
            socket,
            ctx,
            accepting,
        } in sockets
        {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => {
                    let (drain, tracker) = (drain.clone(), tracker.clone());
                    tokio::spawn(async move {
                        listener::accept_loop(l, ctx, drain, tracker).await;
                        drop(accepting);
                    });
                }
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot adopt listener socket")
                }
            }
        }
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    });
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot bind {address}: {source}")]
pub struct BindError {
    /// Listener name.
    pub listener: String,
    /// Configured address.
    pub address: String,
    /// The cause.
    pub source: std::io::Error,
}

/// Controls a running server from elsewhere (signal handlers, the admin server, tests).
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
    drain_tx: Arc<watch::Sender<bool>>,
}

impl ServerHandle {
    /// Re-reads the config file and swaps routes and clusters atomically.
    ///
    /// Only for a server made by [`Server::from_file`]: for one made by [`Server::new`]
    /// there is no file, so this returns an error and changes nothing; use
    /// [`ServerHandle::apply`] instead.
    pub async fn reload(&self) -> Result<ReloadOutcome, String> {
        let r = self.shared.reload_file().await;
        match &r {
            Ok(outcome) => tracing::info!("{}", outcome.to_string().replace('\n', "; ")),
            Err(e) => tracing::error!(
                "config reload rejected; the old config keeps serving: {}",
                e.lines().map(str::trim).collect::<Vec<_>>().join("; ")
            ),
        }
        r
    }

    /// Applies `config` (validated first) as a reload would: routes and clusters are
    /// swapped atomically, requests in flight finish on the old ones, and an invalid
    /// config is rejected whole with every problem and changes nothing. The way to
    /// reconfigure a server built from a value ([`Server::new`]). `config` replaces the
    /// base config; resources from a control plane stay merged in.
    pub async fn apply(&self, config: Config) -> Result<ReloadOutcome, Vec<Problem>> {
        self.shared.apply(config).await
    }

    /// Replaces the resources provided by a control plane (xDS) with `resources`, merges
    /// them by name with the base config (whose resources win on a name clash) and
    /// swaps the result in exactly like a reload: validated whole first, atomic,
    /// requests in flight finish on the old config, endpoint pools and health of
    /// unchanged endpoints are kept. On failure nothing changes and every problem is
    /// returned. Does not count `config_reloads_total`; the caller counts the update
    /// with [`ServerHandle::count_xds_update`].
    pub async fn apply_dynamic(
        &self,
        resources: DynamicResources,
    ) -> Result<ReloadOutcome, Vec<Problem>> {
        self.shared.swap(Change::Dynamic(resources)).await
    }

    /// Counts one xDS update of resource type `type_label` (`cluster`, `endpoint`,
    /// `route`) as accepted (ACK) or rejected (NACK) in `xds_updates_total{type,result}`.
    pub fn count_xds_update(&self, type_label: &str, accepted: bool) {
        self.shared.metrics.xds_update(type_label, accepted);
    }

    /// Where each listener, route config and cluster in force came from.
    pub fn provenance(&self) -> Provenance {
        self.shared.snapshot.load().provenance.clone()
    }

    /// Stops accepting and asks every connection to finish its requests and close.
    pub fn drain(&self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        let _ = self.drain_tx.send(true);
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.snapshot.load().config.clone()
    }

    /// Whether every listener is bound and the server is not draining.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Each cluster's endpoints with health, ejection and active requests, as JSON.
    pub fn clusters_json(&self) -> serde_json::Value {
        let snap = self.shared.snapshot.load();
        serde_json::Value::Array(snap.clusters.iter().map(|c| c.describe()).collect())
    }

    /// Prometheus text exposition of every metric.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }
}

/// A server whose listeners are bound and accepting.
pub struct RunningServer {
    epoch: u64,
    handover: Option<HandoverHandle>,
    handle: ServerHandle,
    addrs: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
    tracker: TaskTracker,
    /// Tracks every accept loop (on this runtime and on per-core workers).
    accepting: TaskTracker,
    stop_workers: watch::Sender<bool>,
    /// Per-core worker threads; joined at shutdown so their sockets are closed when
    /// it returns.
    worker_threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address of listener `name` (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The bound address of the admin server, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A handle for reloads, drain and introspection.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The hot-restart epoch: 0 for a fresh start, +1 per takeover.
    pub fn hot_restart_epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs until `shutdown` completes or a new process has taken the sockets over
    /// (hot restart), then drains: stops accepting, lets connections finish their
    /// requests, and returns when all are closed or `drain_timeout` passed. Returns
    /// whether the drain completed in time.
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        tokio::pin!(shutdown);
        let taken_over: Option<DrainRequest> = match self.handover.as_mut() {
            None => {
                shutdown.await;
                None
            }
            Some(handover) => tokio::select! {
                () = &mut shutdown => None,
                request = handover.taken_over.recv() => {
                    if request.is_none() {
                        shutdown.await;
                    }
                    request
                }
            },
        };
        if let Some(stopped) = taken_over {
            tracing::info!("taken over by a new process: draining");
            // The new process accepts on the listeners and the admin socket now.
            if let Some(stop) = self.admin_stop.take() {
                let _ = stop.send(());
            }
            self.stop_accepting().await;
            let _ = stopped.send(());
        }
        self.shutdown().await
    }

    /// Starts the drain and waits until no accept loop is left.
    async fn stop_accepting(&self) {
        self.handle.drain();
        self.accepting.close();
        self.accepting.wait().await;
    }

    /// Drains now (see [`RunningServer::run_until`]).
    pub async fn shutdown(mut self) -> bool {
        if let Some(handover) = self.handover.take() {
            handover.close();
        }
        let timeout = self
            .handle
            .config()
            .hot_restart
            .as_ref()
            .map_or(DEFAULT_DRAIN_TIMEOUT, |h| h.drain_timeout)
            .get();
        self.stop_accepting().await;
        self.tracker.close();
        let done = tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(?timeout, "drain timeout: closing remaining connections");
        }
        if let Some(stop) = self.admin_stop {
            let _ = stop.send(());
        }
        let _ = self.stop_workers.send(true);
        let threads = self.worker_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        done
    }
}

/// Serves the admin endpoints from a [`ServerHandle`].
struct AdminBridge {
    handle: ServerHandle,
    /// `admin.token_file`'s content, read at start.
    token: Option<String>,
}

#[async_trait::async_trait]
impl AdminHandler for AdminBridge {
    fn metrics(&self) -> String {
        self.handle.metrics_text()
    }

    fn ready(&self) -> bool {
        self.handle.is_ready()
    }

    fn config(&self) -> serde_json::Value {
        let snap = self.handle.shared.snapshot.load();
        let mut value = serde_json::to_value(&*snap.config).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut value {
            map.insert(
                "provenance".to_owned(),
                serde_json::to_value(&snap.provenance).unwrap_or(serde_json::Value::Null),
            );
        }
        value
    }

    fn clusters(&self) -> serde_json::Value {
        self.handle.clusters_json()
    }

    async fn reload(&self) -> Result<String, String> {
        self.handle.reload().await.map(|o| o.to_string())
    }

    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}
