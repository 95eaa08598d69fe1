//! A cluster's `max_pending_requests`: the count of its requests in flight, and the
//! guard ([`PendingSlot`]) that upstream connections hold for requests whose end only
//! they see (mirror copies and one-way calls).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests in flight to one cluster, bounded by its `max_pending_requests`.
pub(crate) struct PendingLimit {
    max: usize,
    count: AtomicUsize,
}

impl PendingLimit {
    /// A limit of `max` requests in flight.
    pub(crate) fn new(max: usize) -> Self {
        PendingLimit {
            max,
            count: AtomicUsize::new(0),
        }
    }

    /// Reserves a slot; false when the limit is reached.
    pub(crate) fn try_acquire(&self) -> bool {
        let prev = self.count.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A slot released when the guard drops.
    pub(crate) fn try_slot(self: &Arc<Self>) -> Option<PendingSlot> {
        self.try_acquire().then(|| PendingSlot(self.clone()))
    }

    /// Releases a slot taken by [`PendingLimit::try_acquire`].
    pub(crate) fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests in flight.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A slot of a cluster's `max_pending_requests`, released on drop.
pub(crate) struct PendingSlot(Arc<PendingLimit>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        let limit = Arc::new(PendingLimit::new(2));
        let a = limit.try_slot().expect("first");
        assert!(limit.try_acquire(), "second");
        assert!(limit.try_slot().is_none(), "over the limit");
        drop(a);
        assert_eq!(limit.count(), 1);
        limit.release();
        assert_eq!(limit.count(), 0);
    }
}
