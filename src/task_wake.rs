//! Waking a connection's task from another task, without a channel.
//!
//! Client and upstream connections hand work to each other by direct calls on shared
//! state; the other side's task only has to be woken when something is left for it
//! (bytes a socket would not take yet, requests queued while connecting, a connection
//! that may now close). [`TaskWake`] is that signal: a flag and an `AtomicWaker`, so a
//! wake-up costs two atomic operations and none is lost between a check and a wait.
//! [`poll_when_signalled`] keeps a connection's timer and drain signal out of the
//! passes of its task's loop until they fire.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::time::Sleep;

/// A wake-up signal for one task. [`TaskWake::wake`] before the task waits is kept:
/// the next [`TaskWake::woken`] completes at once.
#[derive(Default)]
pub(crate) struct TaskWake {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl TaskWake {
    /// Wakes the task (or makes its next wait return at once).
    pub(crate) fn wake(&self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once [`TaskWake::wake`] was called since the last completion (the
    /// tasks poll [`TaskWake::poll_woken`] in their own waits).
    #[cfg(test)]
    pub(crate) fn woken(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_woken(cx))
    }

    /// [`TaskWake::woken`] as a poll, for a task's own hand-written wait.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take_flag() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.take_flag() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
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
        w.wake();
        w.wake();
        tokio::time::timeout(Duration::from_secs(5), w.woken())
            .await
            .expect("the earlier wake is kept");
        let second = tokio::time::timeout(Duration::from_millis(20), w.woken()).await;
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
            w.woken().await;
        });
        tokio::task::yield_now().await;
        waker.wake();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
