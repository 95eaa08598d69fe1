//! What an endpoint's upstream connections share with it: the timeouts they get, the
//! endpoint's `max_connections` counted over every pool and worker, and whether the
//! endpoint recently refused connections. The cluster's `Endpoint` owns one
//! [`EndpointLink`]; the upstream connections hold it, and nothing here knows clusters
//! or pools.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::now_ms;
use crate::config::ClusterConfig;

/// How long an endpoint that refused a connection is skipped by load balancing.
pub(crate) const UNREACHABLE_BACKOFF_MS: u64 = 1_000;

/// Timeouts of an upstream connection, from its cluster's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
}

impl ConnectionSettings {
    pub(crate) fn of(config: &ClusterConfig) -> Self {
        ConnectionSettings {
            connect_timeout: config.connect_timeout.get(),
            write_timeout: config.write_timeout.get(),
            idle_timeout: config.idle_timeout.get(),
            heartbeat_interval: config.heartbeat_interval.get(),
        }
    }
}

/// The part of an endpoint its upstream connections use.
pub(crate) struct EndpointLink {
    /// The cluster's `max_connections`: upstream connections to this endpoint over
    /// every pool and worker together.
    max_connections: AtomicUsize,
    settings: ArcSwap<ConnectionSettings>,
    /// Upstream connections open or opening, over every pool and worker.
    open: Arc<AtomicUsize>,
    unreachable_until_ms: AtomicU64,
    /// Held by a pool while it reserves, opens and publishes a new connection, so that
    /// another worker's pool that finds the endpoint at its limit also finds the new
    /// connection published (and borrows it) instead of finding none.
    opening: Mutex<()>,
}

impl EndpointLink {
    pub(crate) fn new(config: &ClusterConfig) -> Self {
        EndpointLink {
            max_connections: AtomicUsize::new(config.max_connections.max(1)),
            settings: ArcSwap::from_pointee(ConnectionSettings::of(config)),
            open: Arc::new(AtomicUsize::new(0)),
            unreachable_until_ms: AtomicU64::new(0),
            opening: Mutex::new(()),
        }
    }

    /// Held while a connection to this endpoint is reserved, opened and published in
    /// its pool (see the field's note); only taken when a pool may need a connection.
    pub(crate) fn opening(&self) -> MutexGuard<'_, ()> {
        self.opening.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timeouts new upstream connections get.
    pub(crate) fn settings(&self) -> ConnectionSettings {
        **self.settings.load()
    }

    /// The endpoint's `max_connections` in force.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Whether another connection may be opened without going over `max_connections`.
    pub(crate) fn may_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.max_connections.load(Ordering::Relaxed)
    }

    /// Counts a new connection against `max_connections`; `None` when at the limit.
    /// The returned counter is decremented by the connection when it ends.
    pub(crate) fn reserve_connection(&self) -> Option<Arc<AtomicUsize>> {
        let max = self.max_connections.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| self.open.clone())
    }

    /// Whether the endpoint recently refused connections.
    pub(crate) fn is_unreachable(&self) -> bool {
        crate::clock::until_in_future(&self.unreachable_until_ms)
    }

    /// Records a failed connection attempt.
    pub(crate) fn connect_failed(&self) {
        self.unreachable_until_ms
            .store(now_ms() + UNREACHABLE_BACKOFF_MS, Ordering::Relaxed);
    }

    /// Records a connection that was established.
    pub(crate) fn connected(&self) {
        self.unreachable_until_ms.store(0, Ordering::Relaxed);
    }

    /// Updates the connection limits after a reload (called only once the whole new
    /// config compiled).
    pub(crate) fn reconfigure(&self, config: &ClusterConfig) {
        self.settings
            .store(Arc::new(ConnectionSettings::of(config)));
        self.max_connections
            .store(config.max_connections.max(1), Ordering::Relaxed);
    }
}
