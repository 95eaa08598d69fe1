//! How an upstream connection hands a response (or a failure) to the client connection
//! that sent the request: a direct call on the client's state, no channel.
//!
//! The upstream connection only knows the client as a [`ResponseSink`] (so this module
//! and `upstream.rs` never import `downstream.rs`). The sink encodes the response into
//! the client's write buffer at once. Each client delivered to is flushed once, at the
//! end of the worker's turn ([`crate::turn_end`]) on the proxy's runtimes: responses
//! from every backend read in that turn (a client whose requests were split between
//! backends) then leave in one write. On a thread without that hook the upstream
//! connection flushes its clients after each read.

use std::sync::{Arc, Weak};

use meta_protocol::Message;

use crate::clock::Stamp;
use crate::request_token::RequestToken;
use crate::turn_end::{self, AtTurnEnd};

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
    /// Whether the request's deadline passed while the upstream connection still held
    /// it (its sweep dropped it): the client answers with a `timeout` reply, as its own
    /// timer would have, and never retries it.
    pub(crate) expired: bool,
}

impl Failure {
    /// The failure of a request whose deadline passed upstream.
    pub(crate) fn expired() -> Self {
        Failure {
            unsent: None,
            reason: "timeout",
            stale: false,
            expired: true,
        }
    }
}

/// A client connection, as upstream connections see it.
///
/// Lock order: a client connection may call into an upstream connection while it holds
/// its own state (to send a request); an upstream connection never holds its own state
/// while it calls a sink. So neither waits for the other.
///
/// Its [`AtTurnEnd`] work is its [`ResponseSink::flush`].
pub(crate) trait ResponseSink: AtTurnEnd {
    /// Handles the response to request `token`, read at `read_at` (the message is
    /// borrowed: it is encoded for the client where it was decoded, never moved).
    /// Returns true when the sink wants a [`ResponseSink::flush`] call after the
    /// caller's batch (the caller remembers it once; later deliveries before the flush
    /// return false).
    fn respond(&self, token: RequestToken, msg: &mut Message, read_at: Stamp) -> bool;

    /// Handles the failure of request `token`; returns as [`ResponseSink::respond`].
    fn fail(&self, token: RequestToken, failure: Failure) -> bool;

    /// Writes what the deliveries encoded; wakes the client's task when something is
    /// left for it.
    fn flush(&self);

    /// Flushes now and returns true when the client awaits no other answer (no request
    /// of it is in flight any more); otherwise returns false and writes nothing.
    fn flush_unless_awaiting(&self) -> bool;
}

/// Where to deliver the outcome of one request.
pub(crate) struct ReplyTo {
    /// The client connection; gone once it closed.
    pub(crate) sink: Weak<dyn ResponseSink>,
    /// The request, in the client's in-flight table.
    pub(crate) token: RequestToken,
}

impl ReplyTo {
    /// Delivers the response `msg`, read at `read_at` (one clock reading for every
    /// response of a read), unless the client has closed; adds the client to `flush`
    /// when it asks for a flush.
    pub(crate) fn respond(
        self,
        msg: &mut Message,
        read_at: Stamp,
        flush: &mut Vec<Arc<dyn ResponseSink>>,
    ) {
        if let Some(last) = self.same_as_last(flush) {
            last.respond(self.token, msg, read_at);
        } else if let Some(sink) = self.sink.upgrade() {
            if sink.respond(self.token, msg, read_at) {
                flush.push(sink);
            }
        }
    }

    /// Delivers `failure` as [`ReplyTo::respond`] delivers a response.
    pub(crate) fn fail(self, failure: Failure, flush: &mut Vec<Arc<dyn ResponseSink>>) {
        if let Some(last) = self.same_as_last(flush) {
            last.fail(self.token, failure);
        } else if let Some(sink) = self.sink.upgrade() {
            if sink.fail(self.token, failure) {
                flush.push(sink);
            }
        }
    }

    /// The last client added to `flush` when it is this one. Responses read together
    /// mostly go to the client of the one before, which is then called through that
    /// reference instead of upgrading the weak one (two atomic operations fewer); its
    /// flush is queued already, so the call asks for none. (While this weak reference
    /// exists its allocation is not reused, so equal addresses are the same client.)
    fn same_as_last<'a>(
        &self,
        flush: &'a [Arc<dyn ResponseSink>],
    ) -> Option<&'a Arc<dyn ResponseSink>> {
        flush
            .last()
            .filter(|last| std::ptr::addr_eq(Weak::as_ptr(&self.sink), Arc::as_ptr(last)))
    }
}

/// Flushes and forgets every sink in `sinks` (keeping the vector's capacity).
pub(crate) fn flush_all(sinks: &mut Vec<Arc<dyn ResponseSink>>) {
    for sink in sinks.drain(..) {
        sink.flush();
    }
}

/// Flushes every sink in `sinks` at the end of the worker's turn (now, on a thread
/// without that hook), or now when the client awaits no other answer (nothing to
/// gather then: at pipeline 1 the end-of-turn list would only add its cost), and
/// empties the vector (keeping its capacity).
pub(crate) fn flush_at_turn_end(sinks: &mut Vec<Arc<dyn ResponseSink>>) {
    for sink in sinks.drain(..) {
        if !sink.flush_unless_awaiting() {
            turn_end::defer_or_now(sink);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use meta_protocol::MessageKind;
    use std::sync::Mutex;

    /// A client that records what it got and asks for one flush per batch, as a client
    /// connection does.
    #[derive(Default)]
    pub(crate) struct Recorder {
        /// The slots of the requests delivered, in order.
        pub(crate) got: Mutex<Vec<usize>>,
        /// The slots of the requests failed as expired.
        pub(crate) expired: Mutex<Vec<usize>>,
        flush_queued: Mutex<bool>,
    }

    impl Recorder {
        fn record(&self, token: RequestToken) -> bool {
            self.got.lock().unwrap().push(token.slot());
            !std::mem::replace(&mut *self.flush_queued.lock().unwrap(), true)
        }
    }

    impl ResponseSink for Recorder {
        fn respond(&self, token: RequestToken, _msg: &mut Message, _at: Stamp) -> bool {
            self.record(token)
        }
        fn fail(&self, token: RequestToken, failure: Failure) -> bool {
            if failure.expired {
                self.expired.lock().unwrap().push(token.slot());
            }
            self.record(token)
        }
        fn flush(&self) {
            *self.flush_queued.lock().unwrap() = false;
        }
        fn flush_unless_awaiting(&self) -> bool {
            self.flush();
            true
        }
    }

    impl AtTurnEnd for Recorder {
        fn at_turn_end(&self) {
            self.flush();
        }
    }

    /// Where to deliver request `slot` of `sink`.
    pub(crate) fn reply_to(sink: &Arc<Recorder>, slot: usize) -> ReplyTo {
        let sink: Arc<dyn ResponseSink> = sink.clone();
        ReplyTo {
            sink: Arc::downgrade(&sink),
            token: RequestToken::new(slot, 1),
        }
    }

    #[test]
    fn a_batch_reaches_every_client_and_flushes_each_once() {
        let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let gone = Arc::new(Recorder::default());
        let to_gone = reply_to(&gone, 9);
        drop(gone);
        let mut msg = Message::new(MessageKind::Response, 1, Bytes::from_static(b"r"));
        let mut flush = Vec::new();
        // a, a, a (the last two through the flush list), b, a again after b, then a
        // failure for b and a response for a closed client.
        for (sink, slot) in [(&a, 0), (&a, 1), (&a, 2), (&b, 3), (&a, 4)] {
            reply_to(sink, slot).respond(&mut msg, Stamp::default(), &mut flush);
        }
        let failure = Failure {
            unsent: None,
            reason: "test",
            stale: false,
            expired: false,
        };
        reply_to(&b, 5).fail(failure, &mut flush);
        to_gone.respond(&mut msg, Stamp::default(), &mut flush);

        assert_eq!(*a.got.lock().unwrap(), [0, 1, 2, 4]);
        assert_eq!(*b.got.lock().unwrap(), [3, 5]);
        let listed: Vec<*const ()> = flush.iter().map(|s| Arc::as_ptr(s) as *const ()).collect();
        assert_eq!(
            listed,
            [Arc::as_ptr(&a) as *const (), Arc::as_ptr(&b) as *const ()],
            "each client is flushed once"
        );
        flush_all(&mut flush);
        assert!(flush.is_empty());
        assert!(!*a.flush_queued.lock().unwrap() && !*b.flush_queued.lock().unwrap());
        assert_eq!(Arc::strong_count(&a), 1, "no reference kept");
        assert_eq!(Arc::strong_count(&b), 1);
    }
}
