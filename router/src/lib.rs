//! Route matching, weighted splits, mirror policy and load balancers for metaproxy
//! (pure logic, no I/O).
//!
//! - [`RouteTable::compile`] turns a [`RouteConfigSpec`] into an immutable table;
//!   [`RouteTable::route`] finds the first matching [`Route`] for a request's
//!   [`meta_protocol::Metadata`] without allocating.
//! - A [`Route`] picks its target cluster ([`Route::pick_cluster_for`]), decides which
//!   [`Mirror`]s fire, hashes the request ([`Route::hash_key`]) and carries its timeout,
//!   retries and mutations.
//! - A [`LoadBalancer`] per cluster picks an endpoint ([`LoadBalancer::pick`]) given the
//!   request hash, an injected random source and the endpoints' live state
//!   ([`EndpointView`]).
//!
//! Every random choice takes a caller-supplied `rand::Rng`, so tests are deterministic.
//!
//! ## Per request, as the runtime does it
//!
//! ```
//! use meta_protocol::Metadata;
//! use metaproxy_router::*;
//! use rand::{rngs::SmallRng, SeedableRng};
//!
//! // Once per config snapshot: compile routes, build one balancer per cluster.
//! let mut canary = RouteSpec::new("beta-users", "unused");
//! canary.matchers = vec![
//!     MatcherSpec::new("interface", MatchKind::Exact("com.example.DemoService".into())),
//!     MatcherSpec::new("method", MatchKind::Regex("^(get|list)".into())).inverted(),
//! ];
//! canary.target = TargetSpec::Weighted(vec![("demo-v1".into(), 90), ("demo-v2".into(), 10)]);
//! canary.mirrors = vec![MirrorSpec { cluster: "demo-shadow".into(), percent: 100.0 }];
//! canary.hash_policy = vec!["user".into()];
//! canary.request_mutation = vec![("x-route".into(), "beta".into())];
//! let spec = RouteConfigSpec { name: "dubbo-routes".into(), routes: vec![canary] };
//! let table = RouteTable::compile(&spec).map_err(|e| e.prefixed("route_configs[0]")).unwrap();
//!
//! // Resolve each cluster the table names once (here: a balancer per cluster).
//! let balancers: Vec<LoadBalancer> = table
//!     .clusters()
//!     .iter()
//!     .map(|_name| {
//!         let endpoints = [EndpointSpec::new("127.0.0.1:20881", 1), EndpointSpec::new("127.0.0.1:20882", 3)];
//!         LoadBalancer::new(LbPolicy::RingHash, &endpoints).unwrap()
//!     })
//!     .collect();
//!
//! // Per request (no allocation):
//! let mut rng = SmallRng::seed_from_u64(7); // the runtime keeps one per worker thread
//! let metadata: Metadata =
//!     [("interface", "com.example.DemoService"), ("method", "update"), ("user", "u42")].into_iter().collect();
//! let route = table.route(&metadata).expect("a route");   // None: reply "no route matched"
//! let hash = route.hash_key(&metadata);                   // from hash_policy
//! let cluster = route.pick_cluster_for(hash, &mut rng);   // sticky when hashed
//! let lb = &balancers[cluster];
//! let endpoint = lb.pick(hash, &mut rng, &AllAvailable(lb.len())).expect("an endpoint");
//! assert!(endpoint < 2);
//! for mirror in route.firing_mirrors(&mut rng) {
//!     assert_eq!(&*table.clusters()[mirror.cluster()], "demo-shadow");
//! }
//! assert_eq!(&*route.request_mutations()[0].1, "beta");
//! // The same user always lands on the same cluster and endpoint.
//! assert_eq!(route.pick_cluster_for(hash, &mut rng), cluster);
//! assert_eq!(balancers[cluster].pick(hash, &mut rng, &AllAvailable(2)), Some(endpoint));
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod error;
mod hash;
mod lb;
mod matcher;
mod memo;
mod route;
mod spec;
mod table;

pub use error::{RouterError, RouterErrorKind};
pub use hash::{hash_bytes as stable_hash, mix64};
pub use lb::{AllAvailable, EndpointSpec, EndpointView, LbPolicy, LoadBalancer};
pub use matcher::MatchConditions;
pub use memo::{RouteMemo, MEMO_KEYS, MEMO_VALUE_BYTES};
pub use route::{Mirror, Route, WeightedCluster};
pub use spec::{
    MatchKind, MatcherSpec, MirrorSpec, RouteConfigSpec, RouteSpec, TargetSpec,
    DEFAULT_ROUTE_TIMEOUT,
};
pub use table::{RouteTable, FEW_VALUES, MAX_INDEX_KEYS, MAX_PREFIX_KEYS, MAX_PREFIX_LENGTHS};
