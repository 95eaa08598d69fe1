//! The upstream connections a client connection sent its last requests through, so
//! that the next request to the same endpoint goes straight to one of them.
//!
//! A request asks its endpoint's pool for a connection: the pool's lock (an atomic
//! read-modify-write, about 20 cycles) and its pick. A pipelining client sends request
//! after request to the same one or two endpoints (two with a weighted split), and the
//! pool mostly lends it the same connection each time. So each client connection
//! remembers the connection it was last lent for each of the last two endpoints it was
//! lent one for, and sends there directly while that connection is usable and below the
//! load at which the pool would pick another ([`ConnHandle::has_room_for_more`]), for
//! at most [`REUSES`] requests. Otherwise the request goes through the pool as before,
//! and the connection it is lent is remembered.
//!
//! An entry holds a weak reference to its endpoint, so the endpoint's allocation, and
//! with it the identity the entry is matched by, is not reused while the entry exists;
//! and a strong one to the connection's handle (not the connection: its task ends and
//! its socket closes as if the entry were not there). Sending through a remembered
//! connection the backend or the proxy is closing meets the same checks as one the pool
//! lent an instant earlier: the connection refuses it, or hands it back for a free
//! retry. An idle client connection forgets them all.

use std::sync::{Arc, Weak};

use crate::upstream::{ConnHandle, PoolKey};

/// Endpoints remembered: the two of a weighted split.
const ENTRIES: usize = 2;

/// Requests sent through a remembered connection before the pool is asked again. The
/// pool lends the first connection with room, so that after a burst the load gathers on
/// the first ones and the others go idle and close; a client that kept its connection
/// for good could keep one of the others open. Asking again now and then keeps that
/// (one pool lookup per this many requests instead of one per request).
const REUSES: u8 = 32;

/// One endpoint's remembered connection.
struct Entry<E> {
    endpoint: Weak<E>,
    key: PoolKey,
    conn: Arc<ConnHandle>,
    /// Requests it may still take before the pool is asked again.
    reuses_left: u8,
}

/// A client connection's remembered upstream connections, most recent first.
pub(crate) struct RecentConns<E> {
    entries: [Option<Entry<E>>; ENTRIES],
}

impl<E> Default for RecentConns<E> {
    fn default() -> Self {
        RecentConns {
            entries: [None, None],
        }
    }
}

impl<E> RecentConns<E> {
    /// The connection remembered for `endpoint` and `key`, when it may take another
    /// request without asking the pool (counted as one of its [`REUSES`]).
    #[inline]
    pub(crate) fn usable(&mut self, endpoint: &Arc<E>, key: PoolKey) -> Option<&Arc<ConnHandle>> {
        let e =
            self.entries.iter_mut().flatten().find(|e| {
                std::ptr::eq(e.endpoint.as_ptr(), Arc::as_ptr(endpoint)) && e.key == key
            })?;
        if e.reuses_left == 0 || !e.conn.has_room_for_more() {
            return None;
        }
        e.reuses_left -= 1;
        Some(&e.conn)
    }

    /// Remembers `conn`, which the pool lent for a request of `key` to `endpoint`, in
    /// place of what was remembered for that endpoint, or else of the older entry. A
    /// connection that does not multiplex is not remembered: the pool lends it to one
    /// request at a time.
    pub(crate) fn remember(&mut self, endpoint: &Arc<E>, key: PoolKey, conn: &Arc<ConnHandle>) {
        if !conn.multiplexes() {
            return;
        }
        let same = |e: &Option<Entry<E>>| {
            e.as_ref()
                .is_some_and(|e| std::ptr::eq(e.endpoint.as_ptr(), Arc::as_ptr(endpoint)))
        };
        if let Some(Some(e)) = self.entries.iter_mut().find(|e| same(e)) {
            if !Arc::ptr_eq(&e.conn, conn) || e.key != key {
                e.key = key;
                e.conn = conn.clone();
            }
            e.reuses_left = REUSES;
            return;
        }
        self.entries.rotate_right(1);
        self.entries[0] = Some(Entry {
            endpoint: Arc::downgrade(endpoint),
            key,
            conn: conn.clone(),
            reuses_left: REUSES,
        });
    }

    /// Forgets every connection (an idle client connection keeps none).
    pub(crate) fn clear(&mut self) {
        self.entries = [None, None];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::conn as handle;
    use meta_protocol::WireFormat;

    fn key(worker: u16) -> PoolKey {
        PoolKey {
            protocol: 1,
            wire: WireFormat::default(),
            worker,
        }
    }

    #[test]
    fn a_remembered_connection_is_used_while_it_has_room() {
        let mut recent = RecentConns::default();
        let (a, b) = (Arc::new("a"), Arc::new("b"));
        let conn = handle(0, true);
        assert!(
            recent.usable(&a, key(0)).is_none(),
            "nothing remembered yet"
        );
        recent.remember(&a, key(0), &conn);
        assert!(Arc::ptr_eq(recent.usable(&a, key(0)).unwrap(), &conn));
        assert!(recent.usable(&b, key(0)).is_none(), "another endpoint");
        assert!(recent.usable(&a, key(1)).is_none(), "another pool");
        let full = handle(crate::upstream::MUX_SPREAD_THRESHOLD, true);
        recent.remember(&a, key(0), &full);
        assert!(
            recent.usable(&a, key(0)).is_none(),
            "at the pool's spread threshold: the pool picks"
        );
        let closed = handle(0, false);
        recent.remember(&a, key(0), &closed);
        assert!(recent.usable(&a, key(0)).is_none(), "no longer usable");
    }

    #[test]
    fn the_pool_is_asked_again_after_so_many_reuses() {
        let mut recent = RecentConns::default();
        let a = Arc::new(());
        let conn = handle(0, true);
        recent.remember(&a, key(0), &conn);
        for _ in 0..REUSES {
            assert!(recent.usable(&a, key(0)).is_some());
        }
        assert!(recent.usable(&a, key(0)).is_none(), "the pool's turn");
        recent.remember(&a, key(0), &conn);
        assert!(
            recent.usable(&a, key(0)).is_some(),
            "and again after it lent one"
        );
    }

    #[test]
    fn two_endpoints_are_remembered_and_a_third_replaces_the_older() {
        let mut recent = RecentConns::default();
        let (a, b, c) = (Arc::new(1), Arc::new(2), Arc::new(3));
        let (ca, cb, cc) = (handle(0, true), handle(0, true), handle(0, true));
        recent.remember(&a, key(0), &ca);
        recent.remember(&b, key(0), &cb);
        recent.remember(&a, key(0), &ca);
        assert!(Arc::ptr_eq(recent.usable(&a, key(0)).unwrap(), &ca));
        assert!(Arc::ptr_eq(recent.usable(&b, key(0)).unwrap(), &cb));
        recent.remember(&c, key(0), &cc);
        assert!(recent.usable(&a, key(0)).is_none(), "a was the older");
        assert!(Arc::ptr_eq(recent.usable(&b, key(0)).unwrap(), &cb));
        assert!(Arc::ptr_eq(recent.usable(&c, key(0)).unwrap(), &cc));
        recent.clear();
        assert!(recent.usable(&b, key(0)).is_none());
        assert_eq!(
            Arc::strong_count(&cb),
            1,
            "cleared entries hold no connection"
        );
    }

    #[test]
    fn an_endpoint_gone_is_never_matched_by_a_new_one() {
        let mut recent = RecentConns::default();
        let old = Arc::new(7u64);
        recent.remember(&old, key(0), &handle(0, true));
        drop(old);
        // The entry's weak reference keeps the old allocation, so a new endpoint never
        // has its address.
        let new = Arc::new(7u64);
        assert!(recent.usable(&new, key(0)).is_none());
    }
}
