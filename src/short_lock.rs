//! The lock around a connection's state: taken for a few hundred instructions at a
//! time, and, with per-core threading, only ever by the one worker thread that owns the
//! connection.
//!
//! `std::sync::Mutex` costs two atomic read-modify-write instructions per use (a
//! compare-and-swap to take it, a swap to release it, which must see whether a thread
//! sleeps on it). A connection's state is locked several times per request, and on the
//! bench machine each of those instructions costs about as much as twenty ordinary ones
//! (`cargo bench -p metaproxy --bench lock_cost`).
//! [`ShortLock`] takes the lock with one compare-and-swap and releases it with a plain
//! store. Nobody sleeps on it: a thread that finds it taken (only possible with the
//! work-stealing runtime, where two workers may touch one connection) spins briefly,
//! then yields its time slice until the holder is done.

use spinning_top::Spinlock;

/// A held [`ShortLock`]; dropping it releases the lock.
pub(crate) type ShortGuard<'a, T> = spinning_top::guard::SpinlockGuard<'a, T>;

/// Spins before a contended [`ShortLock::lock`] starts yielding the thread.
const SPINS_BEFORE_YIELD: u32 = 64;

/// A mutual-exclusion lock for short critical sections (see the module docs).
pub(crate) struct ShortLock<T>(Spinlock<T>);

impl<T> ShortLock<T> {
    /// A lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        ShortLock(Spinlock::new(value))
    }

    /// Takes the lock; spins, then yields the thread, while another holds it.
    #[inline]
    pub(crate) fn lock(&self) -> ShortGuard<'_, T> {
        if let Some(guard) = self.0.try_lock() {
            return guard;
        }
        self.lock_contended()
    }

    #[cold]
    fn lock_contended(&self) -> ShortGuard<'_, T> {
        loop {
            for _ in 0..SPINS_BEFORE_YIELD {
                if !self.0.is_locked() {
                    if let Some(guard) = self.0.try_lock() {
                        return guard;
                    }
                }
                std::hint::spin_loop();
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_that_contend_each_get_the_lock_and_lose_no_update() {
        let lock = Arc::new(ShortLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 40_000);
    }

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let lock = ShortLock::new(());
        let held = lock.lock();
        assert!(lock.0.try_lock().is_none());
        drop(held);
        assert!(lock.0.try_lock().is_some());
    }
}
