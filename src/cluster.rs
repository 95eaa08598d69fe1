//! Clusters and endpoints at run time: health, ejection, in-flight counts, pools.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use metaproxy_router::{EndpointView, LbPolicy, LoadBalancer};

use crate::clock::now_ms;
use crate::config::{ClusterConfig, OutlierDetectionConfig};
use crate::endpoint_link::EndpointLink;
use crate::observe::metrics::ClusterMetrics;
use crate::pending::{PendingLimit, PendingSlot};
use crate::upstream::{ConnHandle, Pool, PoolKey, Protocol};

/// One upstream address of one cluster. Kept across config reloads while the cluster
/// still lists the address, so its connection pools and health survive.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) address: Arc<str>,
    pub(crate) weight: u32,
    active: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// What the endpoint's upstream connections share with it.
    pub(crate) link: Arc<EndpointLink>,
    pools: ArcSwap<Vec<Arc<Pool>>>,
    pools_lock: Mutex<()>,
    /// Per worker (by [`crate::runtime::worker_id`]), the first pool it used: a request
    /// finds its pool with two loads instead of an `ArcSwap` load and a reference count
    /// each way (four atomic read-modify-writes). Made on the endpoint's first request,
    /// one 16-byte slot per worker id then in use ([`crate::runtime::worker_ids`]): one
    /// under work stealing, workers + 1 per core; an endpoint never used has none.
    /// Other keys (a second protocol or wire format on the same endpoint, a worker
    /// started after the slots were made) take the list.
    worker_pools: OnceLock<Box<[OnceLock<Arc<Pool>>]>>,
    metrics: ClusterMetrics,
}

impl Endpoint {
    fn new(
        addr: SocketAddr,
        address: &str,
        weight: u32,
        config: &ClusterConfig,
        metrics: &ClusterMetrics,
    ) -> Self {
        Endpoint {
            metrics: metrics.clone(),
            link: Arc::new(EndpointLink::new(config)),
            addr,
            address: address.into(),
            weight,
            active: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            pools: ArcSwap::from_pointee(Vec::new()),
            pools_lock: Mutex::new(()),
            worker_pools: OnceLock::new(),
        }
    }

    /// Two-way requests in flight to this endpoint from clusters that balance by
    /// least request (the only readers: other clusters do not count, see
    /// [`ClusterRt::request_started`]).
    pub(crate) fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests queued or in flight on this endpoint's upstream connections (two-way
    /// ones until answered, mirror copies and one-way calls while queued), for the
    /// admin endpoint: whatever the balancer, from the pools' own counts, read under
    /// their locks.
    pub(crate) fn requests_on_connections(&self) -> u64 {
        self.pools.load().iter().map(|p| p.load()).sum()
    }

    /// Whether outlier detection has ejected the endpoint now.
    pub(crate) fn is_ejected(&self) -> bool {
        crate::clock::until_in_future(&self.ejected_until_ms)
    }

    /// Whether the endpoint recently refused connections.
    pub(crate) fn is_unreachable(&self) -> bool {
        self.link.is_unreachable()
    }

    /// Calls `f` with a connection for a request of `key` (`None`: none to be had):
    /// from this worker's pool, or, when the endpoint's `max_connections` are all open
    /// elsewhere (other workers or wire formats of the same protocol), the least loaded
    /// one of a sibling pool. A connection the pool already has is lent under the pool's
    /// lock, so handing a request over takes no reference count.
    pub(crate) fn with_connection<R>(
        self: &Arc<Self>,
        key: PoolKey,
        protocol: &Arc<Protocol>,
        f: impl FnOnce(Option<&Arc<ConnHandle>>) -> R,
    ) -> R {
        let fast = self
            .worker_pools
            .get()
            .and_then(|slots| slots.get(usize::from(key.worker)))
            .and_then(OnceLock::get)
            .filter(|p| p.key == key);
        let slow;
        let pool = match fast {
            Some(pool) => pool,
            None => {
                slow = self.pool(key, protocol);
                &slow
            }
        };
        let f = match pool.with_reused(&self.link, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        if let Some(opened) = pool.open_or_reuse(&self.link) {
            return f(Some(&opened));
        }
        let sibling = self
            .pools
            .load()
            .iter()
            .filter(|p| p.key != key && p.key.protocol == key.protocol && p.key.wire == key.wire)
            .filter_map(|p| p.least_loaded())
            .min_by_key(|c| c.load());
        f(sibling.as_ref())
    }

    /// The pool for `key`, created on first use; the first one a worker uses also goes
    /// in its fast slot.
    fn pool(&self, key: PoolKey, protocol: &Arc<Protocol>) -> Arc<Pool> {
        let pool = self.find_or_create_pool(key, protocol);
        let slots = self.worker_pools.get_or_init(|| {
            (0..crate::runtime::worker_ids())
                .map(|_| OnceLock::new())
                .collect()
        });
        if let Some(slot) = slots.get(usize::from(key.worker)) {
            // Taken already (by another key of this worker): the list serves this one.
            let _ = slot.set(pool.clone());
        }
        pool
    }

    fn find_or_create_pool(&self, key: PoolKey, protocol: &Arc<Protocol>) -> Arc<Pool> {
        if let Some(p) = self.pools.load().iter().find(|p| p.key == key) {
            return p.clone();
        }
        let _guard = self.pools_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.pools.load_full();
        if let Some(p) = current.iter().find(|p| p.key == key) {
            return p.clone();
        }
        let pool = Arc::new(Pool::new(
            key,
            self.addr,
            protocol.clone(),
            self.metrics.clone(),
        ));
        let mut next = (*current).clone();
        next.push(pool.clone());
        self.pools.store(Arc::new(next));
        pool
    }

    /// Updates the connection limits after a reload (called only once the whole new
    /// config compiled).
    fn reconfigure(&self, config: &ClusterConfig) {
        self.link.reconfigure(config);
    }

    /// Open upstream connections to this endpoint.
    pub(crate) fn open_connections(&self) -> usize {
        self.pools.load().iter().map(|p| p.open_connections()).sum()
    }
}

/// A cluster as the request path sees it: endpoints, balancer, limits.
pub(crate) struct ClusterRt {
    pub(crate) name: Arc<str>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) lb: LoadBalancer,
    pending: Arc<PendingLimit>,
    outlier: Option<OutlierDetectionConfig>,
    pub(crate) metrics: ClusterMetrics,
}

impl ClusterRt {
    /// Whether the balancer reads the endpoints' in-flight counts (least request): only
    /// then are they kept, two atomic read-modify-writes per request the other
    /// policies do not pay.
    #[inline]
    fn counts_active(&self) -> bool {
        self.lb.policy() == LbPolicy::LeastRequest
    }

    /// A two-way request of this cluster went to `endpoint`: counted for least request.
    /// Every call is paired with [`ClusterRt::request_finished`] on the same cluster.
    #[inline]
    pub(crate) fn request_started(&self, endpoint: &Endpoint) {
        if self.counts_active() {
            endpoint.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The end of a request [`ClusterRt::request_started`] counted.
    #[inline]
    pub(crate) fn request_finished(&self, endpoint: &Endpoint) {
        if self.counts_active() {
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reserves a pending-request slot; false when `max_pending_requests` is reached.
    pub(crate) fn try_acquire_pending(&self) -> bool {
        self.pending.try_acquire()
    }

    /// A pending-request slot released when the guard drops (for requests whose
    /// completion the upstream connection sees: mirror copies and one-way calls).
    pub(crate) fn try_slot(&self) -> Option<PendingSlot> {
        self.pending.try_slot()
    }

    /// Releases a slot taken by [`ClusterRt::try_acquire_pending`].
    pub(crate) fn release_pending(&self) {
        self.pending.release();
    }

    /// Requests in flight to the cluster.
    pub(crate) fn pending(&self) -> usize {
        self.pending.count()
    }

    /// Records a successful exchange with `endpoint`.
    pub(crate) fn record_success(&self, endpoint: &Endpoint) {
        if endpoint.consecutive_failures.load(Ordering::Relaxed) != 0 {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure (connect failure, reset, timeout) of `endpoint`; may eject it.
    pub(crate) fn record_failure(&self, endpoint: &Endpoint) {
        let Some(od) = &self.outlier else { return };
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < od.consecutive_failures || endpoint.is_ejected() {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        let max = (self.endpoints.len() * od.max_ejection_percent as usize) / 100;
        if ejected >= max.max(if od.max_ejection_percent > 0 { 1 } else { 0 }) {
            return;
        }
        let n = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = od.base_ejection_time.get().as_millis() as u64 * u64::from(n.min(10));
        endpoint
            .ejected_until_ms
            .store(now_ms() + time, Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        self.metrics.outlier_ejections.inc();
        crate::observe::rate_limited!(tracing::Level::WARN, cluster = %self.name, endpoint = %endpoint.address, ejection_ms = time, "outlier ejected");
    }

    /// JSON description for `GET /clusters`.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| {
                let health = if e.is_ejected() {
                    "ejected"
                } else if e.is_unreachable() {
                    "unreachable"
                } else {
                    "healthy"
                };
                serde_json::json!({
                    "address": &*e.address,
                    "weight": e.weight,
                    "health": health,
                    "ejected": e.is_ejected(),
                    "ejections": e.ejections.load(Ordering::Relaxed),
                    "consecutive_failures": e.consecutive_failures.load(Ordering::Relaxed),
                    "active_requests": e.requests_on_connections(),
                    "upstream_connections": e.open_connections(),
                    "max_connections": e.link.max_connections(),
                    "connect_timeout_ms": e.link.settings().connect_timeout.as_millis() as u64,
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "pending_requests": self.pending(),
            "endpoints": endpoints,
        })
    }
}

impl EndpointView for ClusterRt {
    fn len(&self) -> usize {
        self.endpoints.len()
    }

    fn is_available(&self, i: usize) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| !e.is_ejected() && !e.is_unreachable())
    }

    fn active_requests(&self, i: usize) -> u32 {
        self.endpoints.get(i).map_or(0, |e| e.active_requests())
    }
}

/// Endpoints by (cluster, address), so reloads keep pools and health of unchanged ones.
#[derive(Default)]
pub(crate) struct EndpointRegistry {
    endpoints: Mutex<HashMap<(String, String), Arc<Endpoint>>>,
}

impl EndpointRegistry {
    /// Builds the run-time cluster for `config`, reusing known endpoints.
    pub(crate) fn build_cluster(
        &self,
        config: &ClusterConfig,
        addrs: &[SocketAddr],
        lb: LoadBalancer,
        metrics: ClusterMetrics,
    ) -> ClusterRt {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let endpoints = config
            .endpoints
            .iter()
            .zip(addrs)
            .map(|(e, addr)| {
                let key = (config.name.clone(), e.address().to_owned());
                let ep = map
                    .entry(key)
                    .and_modify(|old| {
                        if old.addr != *addr || old.weight != e.weight() {
                            *old = Arc::new(Endpoint::new(
                                *addr,
                                e.address(),
                                e.weight(),
                                config,
                                &metrics,
                            ));
                        }
                    })
                    .or_insert_with(|| {
                        Arc::new(Endpoint::new(
                            *addr,
                            e.address(),
                            e.weight(),
                            config,
                            &metrics,
                        ))
                    })
                    .clone();
                ep.reconfigure(config);
                ep
            })
            .collect();
        ClusterRt {
            name: config.name.as_str().into(),
            endpoints,
            lb,
            pending: Arc::new(PendingLimit::new(config.max_pending_requests)),
            outlier: config
                .outlier_detection
                .enabled
                .then(|| config.outlier_detection.clone()),
            metrics,
        }
    }

    /// Forgets endpoints no cluster of `keep` lists any more (their pools close when the
    /// last in-flight request finishes).
    pub(crate) fn retain(&self, keep: &[(String, String)]) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use crate::endpoint_link::UNREACHABLE_BACKOFF_MS;
    use crate::observe::metrics::Metrics;
    use metaproxy_router::{EndpointSpec, LbPolicy};
    use std::time::Duration;

    fn cluster(endpoints: &[&str], od: OutlierDetectionConfig) -> ClusterRt {
        cluster_with(LbPolicy::RoundRobin, endpoints, od)
    }

    fn cluster_with(policy: LbPolicy, endpoints: &[&str], od: OutlierDetectionConfig) -> ClusterRt {
        let mut config = ClusterConfig::new("c", endpoints);
        config.outlier_detection = od;
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|a| a.parse().unwrap()).collect();
        let specs: Vec<EndpointSpec> = endpoints.iter().map(|a| EndpointSpec::new(*a, 1)).collect();
        let lb = LoadBalancer::new(policy, &specs).unwrap();
        EndpointRegistry::default().build_cluster(&config, &addrs, lb, Metrics::new().cluster("c"))
    }

    #[test]
    fn least_request_clusters_count_requests_in_flight_and_the_balancer_avoids_the_busy() {
        use rand::SeedableRng;
        let c = cluster_with(
            LbPolicy::LeastRequest,
            &["127.0.0.1:1", "127.0.0.1:2"],
            OutlierDetectionConfig::default(),
        );
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut picks = |c: &ClusterRt| {
            let mut to_first = 0;
            for _ in 0..1000 {
                if c.lb.pick(None, &mut rng, c) == Some(0) {
                    to_first += 1;
                }
            }
            to_first
        };
        let idle = picks(&c);
        assert!((400..600).contains(&idle), "idle endpoints share: {idle}");
        for _ in 0..3 {
            c.request_started(&c.endpoints[0]);
        }
        assert_eq!(c.active_requests(0), 3);
        // Power of two choices: the busy endpoint wins only when drawn twice (1 in 4).
        let busy = picks(&c);
        assert!(
            (150..350).contains(&busy),
            "busy endpoint picked {busy} of 1000"
        );
        for _ in 0..3 {
            c.request_finished(&c.endpoints[0]);
        }
        assert_eq!(c.active_requests(0), 0);
    }

    #[test]
    fn other_policies_do_not_count_requests_in_flight() {
        let c = cluster(&["127.0.0.1:1"], OutlierDetectionConfig::default());
        c.request_started(&c.endpoints[0]);
        assert_eq!(c.endpoints[0].active_requests(), 0);
        c.request_finished(&c.endpoints[0]);
        assert_eq!(c.endpoints[0].active_requests(), 0);
    }

    fn detection(consecutive_failures: u32, max_ejection_percent: u32) -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            enabled: true,
            consecutive_failures,
            base_ejection_time: ConfigDuration::from_secs(10),
            max_ejection_percent,
        }
    }

    async fn advance_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_lasts_the_base_time_times_the_ejection_count() {
        let c = cluster(&["127.0.0.1:1", "127.0.0.1:2"], detection(3, 100));
        let e = &c.endpoints[0];
        c.record_failure(e);
        c.record_failure(e);
        assert!(!e.is_ejected(), "two failures are below the threshold");
        c.record_failure(e);
        assert!(e.is_ejected());
        assert!(!c.is_available(0) && c.is_available(1));
        assert_eq!(c.metrics.outlier_ejections.get(), 1);

        advance_ms(9_999).await;
        assert!(e.is_ejected(), "still inside the 10 s base ejection time");
        advance_ms(2).await;
        assert!(!e.is_ejected() && c.is_available(0), "back after 10 s");

        // A success breaks the streak.
        c.record_failure(e);
        c.record_failure(e);
        c.record_success(e);
        c.record_failure(e);
        c.record_failure(e);
        assert!(!e.is_ejected());
        c.record_failure(e);
        assert!(e.is_ejected(), "three in a row again");
        assert_eq!(c.metrics.outlier_ejections.get(), 2);
        // The second ejection lasts twice the base time.
        advance_ms(19_999).await;
        assert!(e.is_ejected());
        advance_ms(2).await;
        assert!(!e.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_caps_how_many_are_out_at_once() {
        let c = cluster(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            detection(2, 25),
        );
        let (a, b) = (&c.endpoints[0], &c.endpoints[1]);
        c.record_failure(a);
        c.record_failure(a);
        assert!(a.is_ejected());
        for _ in 0..5 {
            c.record_failure(b);
        }
        assert!(!b.is_ejected(), "25 % of 4 endpoints: one at a time");
        advance_ms(10_001).await;
        assert!(!a.is_ejected());
        c.record_failure(b);
        assert!(b.is_ejected(), "room again once the first came back");
        assert_eq!(c.metrics.outlier_ejections.get(), 2);
    }

    #[cfg(feature = "dubbo")]
    #[tokio::test]
    async fn a_worker_finds_its_first_pool_in_its_slot_and_other_keys_in_the_list() {
        use crate::upstream::PoolKey;
        use meta_protocol::{CodecOptions, WireFormat};
        let c = cluster(&["127.0.0.1:1"], OutlierDetectionConfig::default());
        let factory = crate::codecs::default_registry()
            .get("dubbo")
            .unwrap()
            .clone();
        let protocol =
            Arc::new(Protocol::new(7, factory, CodecOptions::default(), 1 << 20).unwrap());
        let e = &c.endpoints[0];
        let key = |wire: u16, worker: u16| PoolKey {
            protocol: 7,
            wire: WireFormat(wire),
            worker,
        };
        // The connection lent, by address.
        let conn =
            |e: &Arc<Endpoint>, key| e.with_connection(key, &protocol, |c| c.map(Arc::as_ptr));
        // No await below: the connections' tasks never run, so every connection stays
        // usable and the first-fit pick returns the same one.
        assert!(e.worker_pools.get().is_none(), "no slots before a request");
        crate::runtime::reserve_worker_ids(2);
        let first = conn(e, key(0, 1)).expect("a new connection");
        let slot = |e: &Arc<Endpoint>, worker: usize| {
            e.worker_pools.get().expect("slots made")[worker]
                .get()
                .map(|p| p.key)
        };
        assert_eq!(slot(e, 1), Some(key(0, 1)));
        let again = conn(e, key(0, 1)).expect("the same connection");
        assert!(std::ptr::eq(first, again), "the slot's pool answered");
        assert_eq!(e.pools.load().len(), 1);

        // A second wire format on the same worker: its own pool, through the list; the
        // slot keeps the first.
        let other = conn(e, key(1, 1)).expect("a connection");
        assert!(!std::ptr::eq(first, other));
        assert_eq!(slot(e, 1), Some(key(0, 1)));
        assert_eq!(e.pools.load().len(), 2);
        let other_again = conn(e, key(1, 1)).expect("a connection");
        assert!(std::ptr::eq(other, other_again));

        // A worker beyond the slots still gets a pool of its own.
        let far = e.worker_pools.get().expect("slots made").len() as u16;
        let far_conn = conn(e, key(0, far)).expect("a connection");
        assert!(!std::ptr::eq(first, far_conn));
        assert_eq!(e.pools.load().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_outlier_detection_nothing_is_ejected() {
        let mut config = ClusterConfig::new("c", ["127.0.0.1:1"]);
        config.outlier_detection.enabled = false;
        let specs = [EndpointSpec::new("127.0.0.1:1", 1)];
        let lb = LoadBalancer::new(LbPolicy::RoundRobin, &specs).unwrap();
        let c = EndpointRegistry::default().build_cluster(
            &config,
            &["127.0.0.1:1".parse().unwrap()],
            lb,
            Metrics::new().cluster("c"),
        );
        for _ in 0..100 {
            c.record_failure(&c.endpoints[0]);
        }
        assert!(c.is_available(0));
        // A refused connection makes the endpoint unavailable for a second.
        c.endpoints[0].link.connect_failed();
        assert!(!c.is_available(0));
        advance_ms(UNREACHABLE_BACKOFF_MS + 1).await;
        assert!(c.is_available(0));
    }
}
