//! Work put off to the end of a worker's turn: the writes of upstream connections and
//! of the client connections they answered.
//!
//! A client connection that encodes a request into an upstream connection's write
//! buffer does not wake that connection's task to write it. On a worker thread whose
//! runtime calls [`at_park`] before it parks (every runtime `metaproxy` builds:
//! [`crate::runtime::proxy_runtime`]), it lists the connection here, and the write is
//! made when the worker has run every task that was ready: one `write` per upstream
//! connection for everything every client sent in that turn, with no task woken and no
//! pass through the connection's loop (about 130 instructions a request at pipeline 1
//! with 16 clients, where one write already served about six requests).
//!
//! The other way round, an upstream connection that delivered responses lists their
//! clients' flushes here ([`defer_or_now`]): a client whose requests went to several
//! backends (a weighted split) gets one write for all the answers read in the turn
//! instead of one per backend.
//!
//! A turn can last long under load (the runtime parks only when nothing is ready), so
//! the list is also run after [`MAX_BATCHES_PER_TURN`] read batches, client or upstream
//! ([`batch_done`]).
//! A thread whose runtime has no such hook (an embedding program's own runtime) never
//! enables the list, and its connections wake their tasks as before ([`defer`] takes
//! nothing there).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Read batches (each a `read` and the messages it held), client and upstream ones
/// alike, after which the list is run even though the worker has not parked yet: a
/// bound on how long a write waits when the worker is never idle. Under load about half
/// are client batches: at 16 requests a batch that is about 256 requests a write.
pub(crate) const MAX_BATCHES_PER_TURN: u32 = 32;

/// Something that waits for the end of the turn.
pub(crate) trait AtTurnEnd: Send + Sync {
    /// Does the deferred work. Called once per [`defer`] that took the item.
    fn at_turn_end(&self);
}

thread_local! {
    /// Whether this thread runs [`at_park`] before it parks (set by the first call).
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static DUE: RefCell<Vec<Arc<dyn AtTurnEnd>>> = const { RefCell::new(Vec::new()) };
    /// Read batches since the list was last run.
    static BATCHES: Cell<u32> = const { Cell::new(0) };
}

/// Lists the item `make` returns for the end of this thread's turn, and says so; when
/// this thread has no end-of-turn hook, returns false without calling `make` (the
/// caller then does the work another way).
pub(crate) fn defer(make: impl FnOnce() -> Arc<dyn AtTurnEnd>) -> bool {
    enabled() && list(make()).is_none()
}

/// Lists `item` for the end of this thread's turn, or runs its work now on a thread
/// without the hook (or, which cannot happen, while the list is borrowed): the work is
/// never lost.
pub(crate) fn defer_or_now(item: Arc<dyn AtTurnEnd>) {
    let left = if enabled() { list(item) } else { Some(item) };
    if let Some(item) = left {
        item.at_turn_end();
    }
}

/// Adds `item` to this thread's list; hands it back when the list is borrowed. It is
/// only borrowed inside this module's functions, never while its items run (`run_due`
/// takes it out first), so that cannot happen; if it did, the caller keeps the item
/// rather than a panic.
fn list(item: Arc<dyn AtTurnEnd>) -> Option<Arc<dyn AtTurnEnd>> {
    DUE.with(|due| match due.try_borrow_mut() {
        Ok(mut due) => {
            due.push(item);
            None
        }
        Err(_) => Some(item),
    })
}

/// Whether [`defer`] takes items on this thread.
pub(crate) fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// The end of a turn: runs everything listed on this thread, and from now on lets
/// [`defer`] list work here. The worker runtimes call it just before they park.
pub(crate) fn at_park() {
    ENABLED.with(|e| e.set(true));
    run_due();
}

/// Runs everything listed on this thread, in the order listed, and then what those items
/// listed in turn, so that the list is empty when this returns. (No item lists more
/// today: a failed upstream write wakes its connection's task instead. One that did
/// would otherwise wait for the next park, which may never come.)
fn run_due() {
    BATCHES.with(|b| b.set(0));
    let mut spare = Vec::new();
    loop {
        // The list is taken out (an empty vector left in its place) before its items
        // run, so that they may list more.
        let taken = DUE.with(|due| {
            let mut due = due.try_borrow_mut().ok()?;
            if due.is_empty() {
                return None;
            }
            Some(std::mem::replace(&mut *due, std::mem::take(&mut spare)))
        });
        let Some(mut items) = taken else { break };
        for item in items.drain(..) {
            item.at_turn_end();
        }
        spare = items;
    }
    // The emptied list goes back, so that steady traffic allocates nothing.
    DUE.with(|due| {
        if let Ok(mut due) = due.try_borrow_mut() {
            if due.is_empty() && due.capacity() < spare.capacity() {
                *due = spare;
            }
        }
    });
}

/// Counts one read batch; runs the list when [`MAX_BATCHES_PER_TURN`] were counted
/// since it last ran. Does nothing on a thread without the hook.
pub(crate) fn batch_done() {
    if !enabled() {
        return;
    }
    let n = BATCHES.with(|b| {
        let n = b.get() + 1;
        b.set(n);
        n
    });
    if n >= MAX_BATCHES_PER_TURN {
        run_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(AtomicUsize);

    impl AtTurnEnd for Counter {
        fn at_turn_end(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn nothing_is_deferred_on_a_thread_without_the_hook() {
        std::thread::spawn(|| {
            let c = Arc::new(Counter(AtomicUsize::new(0)));
            assert!(!enabled());
            assert!(!defer(|| c.clone()), "not taken");
            for _ in 0..2 * MAX_BATCHES_PER_TURN {
                batch_done();
            }
            assert!(!enabled(), "counting batches does not enable the list");
            at_park();
            assert!(enabled(), "the hook ran once: enabled from now on");
            assert!(defer(|| c.clone()));
            assert_eq!(
                c.0.load(Ordering::Relaxed),
                0,
                "not before the end of the turn"
            );
            at_park();
            assert_eq!(c.0.load(Ordering::Relaxed), 1);
            at_park();
            assert_eq!(c.0.load(Ordering::Relaxed), 1, "run once per defer");
        })
        .join()
        .unwrap();
    }

    /// Lists another item when it runs.
    struct Lister {
        then: Arc<Counter>,
    }

    impl AtTurnEnd for Lister {
        fn at_turn_end(&self) {
            defer_or_now(self.then.clone());
        }
    }

    #[test]
    fn defer_or_now_runs_the_work_now_without_the_hook_and_at_the_turn_end_with_it() {
        std::thread::spawn(|| {
            let c = Arc::new(Counter(AtomicUsize::new(0)));
            defer_or_now(c.clone());
            assert_eq!(c.0.load(Ordering::Relaxed), 1, "no hook: run at once");

            at_park();
            defer_or_now(c.clone());
            defer_or_now(c.clone());
            assert_eq!(c.0.load(Ordering::Relaxed), 1, "listed, not run yet");
            at_park();
            assert_eq!(c.0.load(Ordering::Relaxed), 3, "each listed item ran");

            // Work listed while the list runs runs in the same turn end: the worker is
            // about to park and might not wake again for it.
            let then = Arc::new(Counter(AtomicUsize::new(0)));
            defer_or_now(Arc::new(Lister { then: then.clone() }));
            at_park();
            assert_eq!(then.0.load(Ordering::Relaxed), 1);
            at_park();
            assert_eq!(then.0.load(Ordering::Relaxed), 1, "and only once");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_that_never_parks_runs_the_list_after_a_bounded_number_of_batches() {
        std::thread::spawn(|| {
            at_park();
            let c = Arc::new(Counter(AtomicUsize::new(0)));
            assert!(defer(|| c.clone()));
            for _ in 1..MAX_BATCHES_PER_TURN {
                batch_done();
            }
            assert_eq!(c.0.load(Ordering::Relaxed), 0);
            batch_done();
            assert_eq!(c.0.load(Ordering::Relaxed), 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_proxy_runtime_runs_the_list_when_it_parks() {
        let rt = crate::runtime::proxy_runtime(&mut tokio::runtime::Builder::new_current_thread())
            .build()
            .unwrap();
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        let seen = c.clone();
        std::thread::spawn(move || {
            rt.block_on(async move {
                // Parks once at start-up (no task ready), which enables the list.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                assert!(defer(|| seen.clone()));
                assert_eq!(seen.0.load(Ordering::Relaxed), 0);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                assert_eq!(
                    seen.0.load(Ordering::Relaxed),
                    1,
                    "ran when the worker parked"
                );
            });
        })
        .join()
        .unwrap();
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
    }
}
