//! Request and response filters: code that runs on every request of a listener after
//! it is decoded and before it is routed, and on every upstream response before it is
//! written back.
//!
//! A listener lists its filters in its config (`filters: [{name, config}]`); each name
//! is looked up in a [`FilterRegistry`], whose [`FilterFactory`] checks the `config`
//! and builds a [`Filter`]. The compiled chain lives in the config snapshot next to the
//! routes, so a reload swaps both at once; a filter whose name and config did not
//! change is carried over with its state (rate-limit buckets keep their tokens).
//!
//! Two filters are built in: [`LOCAL_RATE_LIMIT`] and [`ACCESS_CONTROL`]. Embedding
//! programs add their own exactly like codecs:
//!
//! ```
//! use std::sync::Arc;
//! use metaproxy::filter::*;
//! use metaproxy::meta_protocol::LocalReplyKind;
//!
//! /// Refuses calls that carry no `user`.
//! struct RequireUser;
//! impl Filter for RequireUser {
//!     fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
//!         if request.metadata().contains("user") {
//!             Verdict::Continue
//!         } else {
//!             Verdict::reply(LocalReplyKind::Forbidden, "metaproxy: forbidden: no user")
//!         }
//!     }
//! }
//!
//! struct RequireUserFactory;
//! impl FilterFactory for RequireUserFactory {
//!     fn name(&self) -> &str { "require_user" }
//!     fn build(&self, _config: &serde_json::Value, _ctx: &FilterContext<'_>)
//!         -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
//!         Ok(Arc::new(RequireUser))
//!     }
//! }
//!
//! let mut filters = FilterRegistry::builtin();
//! filters.register(Arc::new(RequireUserFactory));
//! assert!(filters.get("require_user").is_some());
//! ```

mod access_control;
mod chain;
mod rate_limit;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meta_protocol::{LocalReplyKind, Message, MetaStr, Metadata, MetadataMut, ResponseStatus};
use metaproxy_router::RouteTable;

pub use access_control::{AccessControl, AccessControlFactory, ACCESS_CONTROL};
pub use chain::{ChainStep, FilterChain};
pub use rate_limit::{
    LocalRateLimit, LocalRateLimitFactory, LOCAL_RATE_LIMIT, MAX_RATE_LIMIT_KEYS,
};

/// Longest a request may wait on filters that answered [`Verdict::Wait`]; past it the
/// request gets a local reply `timeout`.
pub const MAX_FILTER_WAIT: Duration = Duration::from_secs(15);

/// Requests of one client connection that may wait on filters at once; more get a local
/// reply `overloaded`.
pub const MAX_WAITING_PER_CONNECTION: usize = 1024;

/// The future of a filter that must wait (for example on a remote check).
pub type PendingDecision = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// What a filter's [`Filter::on_request`] decides.
pub enum Verdict {
    /// Go on with the next filter, then routing.
    Continue,
    /// Answer the request now with a protocol-native local reply of this kind and text;
    /// later filters and routing are skipped. One-way requests are dropped instead.
    Reply(LocalReplyKind, Arc<str>),
    /// Wait for the future, then act on its [`Decision`]. Only this variant allocates;
    /// other requests of the connection go on meanwhile.
    Wait(PendingDecision),
}

impl Verdict {
    /// A [`Verdict::Reply`] with `text` (shared: pass an `Arc<str>` kept by the filter to
    /// answer without allocating).
    pub fn reply(kind: LocalReplyKind, text: impl Into<Arc<str>>) -> Verdict {
        Verdict::Reply(kind, text.into())
    }
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Continue => f.write_str("Continue"),
            Verdict::Reply(kind, text) => write!(f, "Reply({kind:?}, {text:?})"),
            Verdict::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// What a waiting filter decides once its future completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the next filter, then routing.
    Continue,
    /// Answer the request with a local reply of this kind and text.
    Reply(LocalReplyKind, Arc<str>),
}

/// A request filter. One instance serves every connection of its listener, from every
/// worker thread at once, so state it keeps must be shared-safe (atomics, `governor`).
pub trait Filter: Send + Sync + 'static {
    /// Runs on each request (two-way or one-way) after decode, before routing. It may
    /// read and change the metadata routing will see, add or remove mutations for the
    /// forwarded request, answer with a local reply, or wait.
    ///
    /// By default does nothing: returns [`Verdict::Continue`].
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
        let _ = request;
        Verdict::Continue
    }

    /// Runs on each upstream response to a request that passed the filters, before it
    /// is written to the client (filters run in reverse order here). It may add or
    /// remove response mutations and observe status and latency. Local replies the
    /// proxy sends itself do not pass here.
    ///
    /// By default does nothing.
    fn on_response(&self, response: &mut FilterResponse<'_>) {
        let _ = response;
    }
}

/// A request as a filter sees it.
pub struct FilterRequest<'a> {
    listener: &'a str,
    message: &'a mut Message,
    table: &'a RouteTable,
}

impl<'a> FilterRequest<'a> {
    /// Wraps `message` of `listener`, routed later by `table` (the proxy does this; tests
    /// and benchmarks may too).
    pub fn new(listener: &'a str, message: &'a mut Message, table: &'a RouteTable) -> Self {
        FilterRequest {
            listener,
            message,
            table,
        }
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        self.listener
    }

    /// The request's routable metadata.
    pub fn metadata(&self) -> &Metadata {
        self.message.metadata()
    }

    /// The metadata routing will see: set or remove keys here to steer routes.
    pub fn metadata_mut(&mut self) -> MetadataMut<'_> {
        self.message.metadata_mut()
    }

    /// Sets `key` to `value` on the forwarded request (a Dubbo attachment, a Thrift
    /// header-transport header); a route's request mutation of the same key wins.
    pub fn push_mutation(&mut self, key: MetaStr, value: MetaStr) {
        self.message.push_mutation(key, value);
    }

    /// Drops the mutations of `key` that earlier filters added.
    pub fn remove_mutation(&mut self, key: &str) {
        self.message.remove_mutation(key);
    }

    /// The whole request (frame, kind, request id).
    pub fn message(&self) -> &Message {
        self.message
    }

    /// The index and name of the route the request would take with its current
    /// metadata, or `None` when no route matches. Costs one route lookup.
    pub fn route(&self) -> Option<(usize, &str)> {
        self.table
            .route(self.message.metadata())
            .map(|r| (r.index(), r.name()))
    }
}

/// An upstream response as a filter sees it.
pub struct FilterResponse<'a> {
    listener: &'a str,
    route: &'a str,
    cluster: &'a str,
    message: &'a mut Message,
    elapsed: Duration,
}

impl<'a> FilterResponse<'a> {
    /// Wraps response `message` to a request of `listener` that took `route` to
    /// `cluster` and was answered after `elapsed` (the proxy does this; tests may too).
    pub fn new(
        listener: &'a str,
        route: &'a str,
        cluster: &'a str,
        message: &'a mut Message,
        elapsed: Duration,
    ) -> Self {
        FilterResponse {
            listener,
            route,
            cluster,
            message,
            elapsed,
        }
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        self.listener
    }

    /// The name of the route the request took.
    pub fn route(&self) -> &str {
        self.route
    }

    /// The cluster that answered.
    pub fn cluster(&self) -> &str {
        self.cluster
    }

    /// How the call ended (ok, error, exception).
    pub fn status(&self) -> ResponseStatus {
        self.message.status()
    }

    /// Time from handing the request to the upstream until this response arrived.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The response's metadata, as its codec decoded it.
    pub fn metadata(&self) -> &Metadata {
        self.message.metadata()
    }

    /// Sets `key` to `value` on the response written to the client (where the protocol
    /// carries response attachments or headers).
    pub fn push_mutation(&mut self, key: MetaStr, value: MetaStr) {
        self.message.push_mutation(key, value);
    }

    /// Drops the response mutations of `key` added so far (route or filters).
    pub fn remove_mutation(&mut self, key: &str) {
        self.message.remove_mutation(key);
    }
}

/// A problem in one filter's `config`, with the path of the field below `config`
/// (empty for the whole block), for example `rate`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterConfigError {
    /// Field path relative to the filter's `config` (`""`, `rate`, `rules[0].metadata[1]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FilterConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FilterConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a factory knows about where its filter runs.
#[derive(Clone, Copy, Debug)]
pub struct FilterContext<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The filter's label in metrics and logs: its name, or `name#i` (i = position in
    /// the listener's list) when the name appears more than once on the listener.
    pub label: &'a str,
}

/// Checks a filter's config and builds the filter; registered by name.
pub trait FilterFactory: Send + Sync + 'static {
    /// The name used in `filters[].name`.
    fn name(&self) -> &str;

    /// Checks `config` (the entry's `config:` block, `null` when absent) and builds the
    /// filter. `check` and reload call this too, so it must not start anything; report
    /// every problem found, each with its field path below `config`.
    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>>;
}

/// Filter factories by name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<String, Arc<dyn FilterFactory>>,
}

impl std::fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl FilterRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the built-in filters, [`LOCAL_RATE_LIMIT`] and [`ACCESS_CONTROL`].
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registry.register(Arc::new(LocalRateLimitFactory));
        registry.register(Arc::new(AccessControlFactory));
        registry
    }

    /// Adds `factory` under its name, replacing one of the same name.
    pub fn register(&mut self, factory: Arc<dyn FilterFactory>) {
        self.factories.insert(factory.name().to_owned(), factory);
    }

    /// The factory registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn FilterFactory>> {
        self.factories.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }
}

/// Parses a filter's `config` block into `T`, reporting a schema error (unknown field,
/// wrong type) against the whole block.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
) -> Result<T, Vec<FilterConfigError>> {
    let value = if config.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        config.clone()
    };
    serde_json::from_value(value).map_err(|e| vec![FilterConfigError::new("", e.to_string())])
}
