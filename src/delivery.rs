//! How an upstream connection hands a response (or a failure) to the client connection
//! that sent the request: a direct call on the client's state, no channel.
//!
//! The upstream connection only knows the client as a [`ResponseSink`] (so this module
//! and `upstream.rs` never import `downstream.rs`). The sink encodes the response into
//! the client's write buffer at once; the upstream connection flushes every client it
//! delivered to once per read, so a read full of responses costs one write per client.

use std::sync::{Arc, Weak};

use meta_protocol::Message;

use crate::request_token::RequestToken;

/// A request that failed upstream. `unsent` carries it back when it never reached the
/// backend, so it may be retried elsewhere. `stale` says it was never written because
/// its connection went away between requests (closed by the backend after answering
/// others, idle, drained): a retry on a fresh connection that does not count against
/// the route's retries nor as an endpoint failure.
pub(crate) struct Failure {
    /// The request, when it was never written.
    pub(crate) unsent: Option<Message>,
    /// Why, for the local reply.
    pub(crate) reason: &'static str,
    /// Whether the connection went away between requests.
    pub(crate) stale: bool,
}

/// A client connection, as upstream connections see it.
///
/// Lock order: a client connection may call into an upstream connection while it holds
/// its own state (to send a request); an upstream connection never holds its own state
/// while it calls a sink. So neither waits for the other.
pub(crate) trait ResponseSink: Send + Sync {
    /// Handles the response to request `token` (the message is borrowed: it is encoded
    /// for the client where it was decoded, never moved). Returns true when the sink
    /// wants a [`ResponseSink::flush`] call after the caller's batch (the caller
    /// remembers it once; later deliveries before the flush return false).
    fn respond(&self, token: RequestToken, msg: &mut Message) -> bool;

    /// Handles the failure of request `token`; returns as [`ResponseSink::respond`].
    fn fail(&self, token: RequestToken, failure: Failure) -> bool;

    /// Writes what the deliveries encoded; wakes the client's task when something is
    /// left for it.
    fn flush(&self);
}

/// Where to deliver the outcome of one request.
pub(crate) struct ReplyTo {
    /// The client connection; gone once it closed.
    pub(crate) sink: Weak<dyn ResponseSink>,
    /// The request, in the client's in-flight table.
    pub(crate) token: RequestToken,
}

impl ReplyTo {
    /// Delivers the response `msg` unless the client has closed; adds the client to
    /// `flush` when it asks for a flush.
    pub(crate) fn respond(self, msg: &mut Message, flush: &mut Vec<Arc<dyn ResponseSink>>) {
        if let Some(sink) = self.sink.upgrade() {
            if sink.respond(self.token, msg) {
                flush.push(sink);
            }
        }
    }

    /// Delivers `failure` as [`ReplyTo::respond`] delivers a response.
    pub(crate) fn fail(self, failure: Failure, flush: &mut Vec<Arc<dyn ResponseSink>>) {
        if let Some(sink) = self.sink.upgrade() {
            if sink.fail(self.token, failure) {
                flush.push(sink);
            }
        }
    }
}

/// Flushes and forgets every sink in `sinks` (keeping the vector's capacity).
pub(crate) fn flush_all(sinks: &mut Vec<Arc<dyn ResponseSink>>) {
    for sink in sinks.drain(..) {
        sink.flush();
    }
}
