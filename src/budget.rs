//! The process-wide budget for buffered bytes: requests in flight plus replies waiting
//! for clients, over every connection. A request that would go beyond it gets the
//! local reply `overloaded`, so memory stays bounded however many peers misbehave.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::observe::metrics::Gauge;

/// Bytes in use against `limits.max_buffered_bytes`, shown as `metaproxy_buffered_bytes`.
pub(crate) struct BufferBudget {
    max: AtomicUsize,
    used: Gauge,
}

impl BufferBudget {
    pub(crate) fn new(max: usize, used: Gauge) -> Self {
        BufferBudget {
            max: AtomicUsize::new(max),
            used,
        }
    }

    /// Applies a reloaded limit.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether `bytes` more fit in the budget.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        let used = usize::try_from(self.used.get()).unwrap_or(0);
        used.saturating_add(bytes) <= self.max.load(Ordering::Relaxed)
    }

    /// Records that a holder's bytes went from `before` to `after`.
    #[inline]
    pub(crate) fn update(&self, before: usize, after: usize) {
        if before != after {
            self.used.add(after as i64 - before as i64);
        }
    }
}

/// Bytes of a mirror copy or one-way call held by an upstream connection until it is
/// written (one-way) or answered or expired (mirror); given back on drop.
pub(crate) struct BudgetCharge {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl BufferBudget {
    /// Charges `bytes` to the budget until the returned guard drops; `None` when they
    /// do not fit.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Option<BudgetCharge> {
        self.has_room(bytes).then(|| {
            self.update(0, bytes);
            BudgetCharge {
                budget: self.clone(),
                bytes,
            }
        })
    }
}

impl Drop for BudgetCharge {
    fn drop(&mut self) {
        self.budget.update(self.bytes, 0);
    }
}
