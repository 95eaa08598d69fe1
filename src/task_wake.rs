//! Waking a connection's task from another task, without a channel.
//!
//! Client and upstream connections hand work to each other by direct calls on shared
//! state; the other side's task only has to be woken when something is left for it
//! (bytes a socket would not take yet, requests queued while connecting, a connection
//! that may now close). [`TaskWake`] is that signal: a flag and the waiting task's
//! waker, registered once, so that none is lost between a check and a wait and a task
//! that waits again and again pays no atomic instruction for it.
//! [`poll_when_signalled`] keeps a connection's timer and drain signal out of the
//! passes of its task's loop until they fire.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::time::Sleep;

use crate::short_lock::ShortLock;

/// A wake-up signal for one task. [`TaskWake::wake`] before the task waits is kept:
/// the next [`TaskWake::woken`] completes at once.
///
/// The task's waker stays registered after a wake-up (it is woken by reference), so a
/// wait registers nothing unless the task's waker changed since the last one: the
/// waiting side of a wait that finds nothing is one load of the flag. (An
/// `AtomicWaker` gives its waker away on every wake-up and takes two compare-and-swaps
/// to register one again, on every pass of a connection's loop.)
#[derive(Default)]
pub(crate) struct TaskWake {
    flag: AtomicBool,
    waker: ShortLock<Option<Waker>>,
}

impl TaskWake {
    /// Wakes the task (or makes its next wait return at once). A wake-up while an
    /// earlier one is not consumed yet does nothing more.
    pub(crate) fn wake(&self) {
        if self.flag.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(waker) = self.waker.lock().as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Completes once [`TaskWake::wake`] was called since the last completion.
    /// `registered` is the waiting task's own note of the waker it registered (start
    /// with `None`, keep it across waits): while it is the task's current waker, the
    /// wait only looks at the flag.
    pub(crate) fn woken<'a>(
        &'a self,
        registered: &'a mut Option<Waker>,
    ) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if self.take_flag() {
                return Poll::Ready(());
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let waker = cx.waker().clone();
                *self.waker.lock() = Some(waker.clone());
                *registered = Some(waker);
                // A wake-up that found no waker yet set the flag before it looked.
                if self.take_flag() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
    }

    /// Clears the flag, returning whether it was set. Looks before it swaps: the task
    /// polls this on every pass of its loop, mostly while the flag is clear, and a
    /// load costs a few cycles where an atomic swap costs a few dozen. (Only the woken
    /// task clears the flag, so a set flag seen by the load is still set for the swap.)
    #[inline]
    fn take_flag(&self) -> bool {
        self.flag.load(Ordering::Acquire) && self.flag.swap(false, Ordering::Acquire)
    }
}

/// Polls `fut` only when it may be ready. A timer or a channel's notification keeps
/// the waker of its last poll until it completes, so while `holds_waker` is set and
/// `signalled` (a cheap look, such as a flag or a version) says nothing happened, a poll
/// would only hand it the same waker again. Call it from the future the task waits on,
/// not from a `select!` branch guard: a guard is read once per `select!`, and would
/// switch off the branch that the future's own wake-up is for.
pub(crate) fn poll_when_signalled<F: Future>(
    mut fut: Pin<&mut F>,
    holds_waker: &mut bool,
    signalled: impl FnOnce(&F) -> bool,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    if *holds_waker && !signalled(&fut) {
        return Poll::Pending;
    }
    // Out of tokio's cooperative budget, a poll returns pending without taking the
    // waker: the future is then polled again next time.
    let budget = tokio::task::coop::has_budget_remaining();
    let polled = fut.as_mut().poll(cx);
    *holds_waker = polled.is_pending() && budget;
    polled
}

/// [`poll_when_signalled`] for a timer: polled only once it fired (moving its deadline
/// keeps its waker; a poll costs about 120 instructions, a look whether it fired a
/// load).
pub(crate) fn poll_timer(
    timer: Pin<&mut Sleep>,
    holds_waker: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<()> {
    poll_when_signalled(timer, holds_waker, Sleep::is_elapsed, cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_used_once() {
        let w = TaskWake::default();
        let mut registered = None;
        w.wake();
        w.wake();
        tokio::time::timeout(Duration::from_secs(5), w.woken(&mut registered))
            .await
            .expect("the earlier wake is kept");
        let second =
            tokio::time::timeout(Duration::from_millis(20), w.woken(&mut registered)).await;
        assert!(second.is_err(), "two wakes before one wait are one wake-up");
    }

    /// Polls the timer once through [`poll_timer`], without waiting.
    async fn poll_once(mut timer: Pin<&mut Sleep>, holds_waker: &mut bool) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(poll_timer(timer.as_mut(), holds_waker, cx))).await
    }

    /// Waits through [`poll_timer`] until the timer fired (a minute at most).
    async fn until_fired(mut timer: Pin<&mut Sleep>, holds_waker: &mut bool) {
        tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| poll_timer(timer.as_mut(), holds_waker, cx)),
        )
        .await
        .expect("the timer's wake-up ends the wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_left_unpolled_wakes_its_task_when_it_fires() {
        let start = tokio::time::Instant::now();
        let timer = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(timer);
        let mut holds = false;
        assert!(poll_once(timer.as_mut(), &mut holds).await.is_pending());
        assert!(holds, "a pending poll with budget left holds the waker");
        // From here on the timer is not polled until it fired; its wake-up still ends
        // the wait (the paused clock jumps to it).
        until_fired(timer.as_mut(), &mut holds).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(!holds, "a timer that fired gave its waker away");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_moved_while_it_holds_the_waker_fires_at_its_new_deadline() {
        let start = tokio::time::Instant::now();
        let timer = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(timer);
        let mut holds = false;
        assert!(poll_once(timer.as_mut(), &mut holds).await.is_pending());
        timer.as_mut().reset(start + Duration::from_secs(3));
        until_fired(timer.as_mut(), &mut holds).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3), "moved earlier");
        // Fired, then moved later: polled again (it has no waker), it fires once more.
        timer.as_mut().reset(start + Duration::from_secs(7));
        until_fired(timer.as_mut(), &mut holds).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(7),
            "re-armed after firing"
        );
    }

    #[tokio::test]
    async fn a_wake_from_another_task_ends_the_wait() {
        let w = Arc::new(TaskWake::default());
        let waker = w.clone();
        let waiting = tokio::spawn(async move {
            w.woken(&mut None).await;
        });
        tokio::task::yield_now().await;
        waker.wake();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }

    /// The waker stays registered across wake-ups: each later wait registers nothing,
    /// yet every wake-up from another thread ends one (none is lost between the waiting
    /// task's look at the flag and its wait).
    #[test]
    fn a_task_that_waits_again_and_again_misses_no_wake_up() {
        const ROUNDS: usize = 2_000;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let w = Arc::new(TaskWake::default());
            let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (w2, done2) = (w.clone(), done.clone());
            let waiting = tokio::spawn(async move {
                let mut registered = None;
                for round in 1..=ROUNDS {
                    w2.woken(&mut registered).await;
                    done2.store(round, Ordering::Release);
                }
                registered.is_some()
            });
            let waking = std::thread::spawn(move || {
                for round in 1..=ROUNDS {
                    w.wake();
                    // The next wake-up only once this one was consumed, so that each
                    // is one wake-up of its own.
                    while done.load(Ordering::Acquire) < round {
                        std::thread::yield_now();
                    }
                }
            });
            let registered = tokio::time::timeout(Duration::from_secs(60), waiting)
                .await
                .expect("every wake-up ended a wait")
                .unwrap();
            assert!(registered, "the waker was registered once and kept");
            waking.join().unwrap();
        });
    }
}
