//! Replies the proxy sends on its own; each reason is counted in
//! `metaproxy_local_replies_total{reason}` (see `docs/METRICS.md`).

/// Why the proxy answers a request itself. Each maps to a protocol-native status
/// (Dubbo) or exception type (Thrift) chosen by the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalReplyKind {
    /// No route matched the request's metadata.
    NoRoute,
    /// No healthy endpoint, connect failure, or upstream closed/reset before replying.
    UpstreamFailure,
    /// The route's timeout elapsed.
    Timeout,
    /// The cluster's `max_pending_requests` was reached.
    Overloaded,
    /// The request could not be decoded.
    BadRequest,
    /// A filter's rate limit refused the request (for example `local_rate_limit`).
    RateLimited,
    /// A filter's access rule refused the request (for example `access_control`).
    Forbidden,
}

impl LocalReplyKind {
    /// Every kind, in metric order.
    pub const ALL: [LocalReplyKind; 7] = [
        LocalReplyKind::NoRoute,
        LocalReplyKind::UpstreamFailure,
        LocalReplyKind::Timeout,
        LocalReplyKind::Overloaded,
        LocalReplyKind::BadRequest,
        LocalReplyKind::RateLimited,
        LocalReplyKind::Forbidden,
    ];

    /// The `reason` label of `local_replies_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReplyKind::NoRoute => "no_route",
            LocalReplyKind::UpstreamFailure => "upstream_failure",
            LocalReplyKind::Timeout => "timeout",
            LocalReplyKind::Overloaded => "overloaded",
            LocalReplyKind::BadRequest => "bad_request",
            LocalReplyKind::RateLimited => "rate_limited",
            LocalReplyKind::Forbidden => "forbidden",
        }
    }
}

/// A local reply to encode: the reason and a human-readable message for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalReply<'a> {
    /// Why the proxy answers.
    pub kind: LocalReplyKind,
    /// Human-readable text for the client, starting with `metaproxy: ` (for example
    /// `metaproxy: no route matched the request (interface=com.example.Demo)`). It may
    /// hold any UTF-8, including text copied from the request.
    pub message: &'a str,
}

impl<'a> LocalReply<'a> {
    /// A reply of `kind` with `message`.
    pub fn new(kind: LocalReplyKind, message: &'a str) -> Self {
        LocalReply { kind, message }
    }
}
