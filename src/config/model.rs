//! The configuration file's schema, documented field by field in docs/CONFIG.md. Unknown fields are errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::ConfigDuration;

/// The whole configuration file. `Config::default()` is the empty config (no admin,
/// no listeners); see [`crate::config`] for building one in code.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin HTTP server; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// The xDS control plane; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsConfig>,
    /// Hot restart settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_restart: Option<HotRestartConfig>,
    /// Where clients connect.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Named route tables.
    #[serde(default)]
    pub route_configs: Vec<RouteConfig>,
    /// Named groups of upstream endpoints.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Process-wide limits.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `limits:`: bounds over the whole process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Bytes of requests in flight plus replies waiting for clients, over every
    /// connection; a request beyond it gets the local reply `overloaded`. Default
    /// 512 MiB.
    #[serde(default = "default_process_buffered_bytes")]
    pub max_buffered_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_buffered_bytes: default_process_buffered_bytes(),
        }
    }
}

fn default_process_buffered_bytes() -> usize {
    512 * 1024 * 1024
}

/// `admin:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to bind the admin server to (loopback in every example).
    pub address: String,
    /// A file holding a bearer token; then every admin request needs
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// `xds:`: clusters, endpoints and route configs from an xDS control plane over ADS
/// (see docs/XDS.md). With it set, a listener's `route_config` and a cluster's
/// endpoints may be missing from the file: they are expected from the control plane,
/// and until they arrive requests get the `no_route` or `upstream_failure` reply.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// `host:port` of the control plane's plaintext gRPC port (Istio: `istiod:15010`).
    pub address: String,
    /// The node id sent to the control plane (Istio: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`).
    pub node_id: String,
    /// The node's cluster (service) name sent to the control plane. Default empty.
    #[serde(default)]
    pub node_cluster: String,
    /// How long a connection attempt to the control plane may take. Default 5s.
    #[serde(default = "default_xds_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// First reconnect delay after the stream is lost; doubled per failed attempt, with
    /// jitter (each delay is drawn from half to all of its nominal value). Default 500ms.
    #[serde(default = "default_xds_backoff_base")]
    pub backoff_base: ConfigDuration,
    /// Largest reconnect delay. Default 30s.
    #[serde(default = "default_xds_backoff_max")]
    pub backoff_max: ConfigDuration,
    /// Largest discovery response accepted, in bytes; a larger one ends the stream,
    /// which is then reconnected. Default 16 MiB.
    #[serde(default = "default_xds_max_message_size")]
    pub max_message_size: usize,
}

fn default_xds_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_xds_backoff_base() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(500))
}
fn default_xds_backoff_max() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_xds_max_message_size() -> usize {
    16 * 1024 * 1024
}

/// `hot_restart:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HotRestartConfig {
    /// Unix socket used by `--takeover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// How long a drain may take (also used by SIGTERM). Default 30s.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
}

fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

/// Default `drain_timeout` when `hot_restart` is absent.
pub const DEFAULT_DRAIN_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);

/// One entry of `listeners:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// `host:port` to bind.
    pub address: String,
    /// Codec name: `dubbo`, `thrift`, or one registered by an embedding program.
    pub codec: String,
    /// Codec options (strings).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Name of the route config to use.
    pub route_config: String,
    /// Largest accepted frame in bytes. Default 16 MiB.
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: usize,
    /// Close a connection idle this long. Default 300s.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Connections beyond this are closed at once. Default 10000.
    #[serde(default = "default_max_connections_listener")]
    pub max_connections: usize,
    /// Per connection: reading pauses while requests in flight, or replies waiting
    /// for the client, hold this many bytes; replies past twice this close the
    /// connection. Default 4 MiB.
    #[serde(default = "default_connection_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Replies waiting this long without the client reading any close the
    /// connection. Default 30s.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: ConfigDuration,
    /// A frame started must be complete within this, or the connection closes.
    /// Default 30s.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: ConfigDuration,
    /// Optional access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Filters run in this order on each request, after decode and before routing
    /// (and in reverse order on each response). None by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
}

/// One entry of a listener's `filters:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The filter's registered name (`local_rate_limit`, `access_control`, or one an
    /// embedding program registered).
    pub name: String,
    /// The filter's own settings, checked by the filter (absent = `null`).
    #[serde(default)]
    pub config: serde_json::Value,
}

fn default_max_frame_size() -> usize {
    meta_protocol::DEFAULT_MAX_FRAME_SIZE
}
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_max_connections_listener() -> usize {
    10_000
}
fn default_connection_buffered_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_write_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_frame_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_upstream_write_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_upstream_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_heartbeat_interval() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

/// `access_log:` of a listener: one JSON line per request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file path, or `stdout` (also `-`) for standard output.
    pub path: String,
}

/// One entry of `route_configs:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, referred to by listeners.
    pub name: String,
    /// Routes in order; the first whose match holds wins.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
}

/// One route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// Name, used in metrics and logs. Defaults to `route-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions; none matches everything.
    #[serde(default, rename = "match")]
    pub match_: RouteMatch,
    /// Where matching requests go.
    pub route: RouteAction,
    /// Set on the forwarded request.
    #[serde(default)]
    pub request_mutation: Vec<KeyValue>,
    /// Set on the returned response.
    #[serde(default)]
    pub response_mutation: Vec<KeyValue>,
}

/// `match:` of a route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Metadata conditions; all must hold.
    #[serde(default)]
    pub metadata: Vec<MetadataMatch>,
}

/// One metadata condition: exactly one of `exact`, `prefix`, `suffix`, `regex`,
/// `present: true`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatch {
    /// Metadata key (case-sensitive).
    pub key: String,
    /// Value equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value ends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Value matches this regular expression (unanchored unless written with ^ $).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Key is present (only `true` is meaningful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negates this condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// `route:` of a route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    /// A single target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A weighted split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Fire-and-forget copies.
    #[serde(default)]
    pub mirror: Vec<MirrorPolicy>,
    /// Metadata keys hashed for ring_hash / maglev.
    #[serde(default)]
    pub hash_policy: Vec<String>,
    /// Per-request timeout. Default 15s.
    #[serde(default = "default_route_timeout")]
    pub timeout: ConfigDuration,
    /// Retries of requests that were never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
}

fn default_route_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(15)
}

/// `{cluster, weight}` of a weighted split.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Integer weight.
    pub weight: u32,
}

/// `{cluster, percent}` of a mirror.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    /// Cluster receiving copies.
    pub cluster: String,
    /// Share of requests copied, 0..=100, fractions allowed. Default 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
}

fn default_percent() -> f64 {
    100.0
}

/// `retries:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Extra attempts.
    pub attempts: u32,
}

/// `{key, value}` of a mutation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// One entry of `clusters:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// Load-balancing policy. Default round_robin.
    #[serde(default)]
    pub lb_policy: LbPolicyName,
    /// Connect timeout. Default 1s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Upstream connections per endpoint. Default 64.
    #[serde(default = "default_max_connections_cluster")]
    pub max_connections: usize,
    /// Requests in flight to the cluster beyond which the proxy answers "overloaded".
    /// Default 1024.
    #[serde(default = "default_max_pending")]
    pub max_pending_requests: usize,
    /// Output to a backend that makes no write progress for this long closes the
    /// connection (its requests fail). Default 10s.
    #[serde(default = "default_upstream_write_timeout")]
    pub write_timeout: ConfigDuration,
    /// An upstream connection with no request in flight for this long is closed.
    /// Default 300s.
    #[serde(default = "default_upstream_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Where the protocol has heartbeats (Dubbo): an upstream connection quiet this
    /// long is probed; no answer within another interval closes it. Default 30s.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: ConfigDuration,
    /// Outlier detection; on by default.
    #[serde(default)]
    pub outlier_detection: OutlierDetectionConfig,
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_max_connections_cluster() -> usize {
    64
}
fn default_max_pending() -> usize {
    1024
}

/// An endpoint: `"host:port"` or `{address, weight}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// `host:port`, weight 1.
    Address(String),
    /// With a weight.
    Weighted(WeightedEndpoint),
}

impl EndpointConfig {
    /// The `host:port`.
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(a) => a,
            EndpointConfig::Weighted(w) => &w.address,
        }
    }

    /// The weight (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted(w) => w.weight,
        }
    }
}

/// `{address, weight}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    /// `host:port`.
    pub address: String,
    /// Weight, default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `lb_policy:`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicyName {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Consistent hashing on a ring.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

/// `outlier_detection:`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// Whether outlier detection runs for the cluster. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Failures in a row that eject an endpoint. Default 5.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection time; multiplied by the number of ejections so far. Default 30s.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: ConfigDuration,
    /// At most this share of the cluster is ejected at once. Default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            enabled: true,
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_max_ejection_percent() -> u32 {
    10
}
