//! Observability: the Prometheus metrics and the admin HTTP server (docs/METRICS.md),
//! and per-listener JSON access logs.
//!
//! - [`metrics`]: a lock-free registry; look handles up once, then only atomic adds.
//! - [`admin`]: `GET /metrics`, `/ready`, `/config`, `/clusters`, `POST /reload`.
//! - [`access_log`]: one JSON line per request, written off the request path.

pub mod access_log;
pub mod admin;
pub(crate) mod log_limit;
pub mod metrics;

pub(crate) use log_limit::rate_limited;

pub use access_log::{
    AccessLogConfig, AccessLogEntry, AccessLogError, AccessLogTarget, AccessLogger, AccessStatus,
    LoggedMetadata,
};
pub use admin::{serve, AdminHandler};
pub use metrics::{
    ClusterMetrics, Counter, Gauge, GaugeGuard, Histogram, ListenerMetrics, Metrics,
    ResponseMetrics,
};
