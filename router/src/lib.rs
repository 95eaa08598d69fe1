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
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod error;
mod hash;
mod lb;
mod matcher;
mod route;
mod spec;
mod table;

pub use error::{RouterError, RouterErrorKind};
pub use hash::{hash_bytes as stable_hash, mix64};
pub use lb::{AllAvailable, EndpointSpec, EndpointView, LbPolicy, LoadBalancer};
pub use route::{Mirror, Route, WeightedCluster};
pub use spec::{
    MatchKind, MatcherSpec, MirrorSpec, RouteConfigSpec, RouteSpec, TargetSpec,
    DEFAULT_ROUTE_TIMEOUT,
};
pub use table::{RouteTable, MAX_INDEX_KEYS};
