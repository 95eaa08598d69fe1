//! Waking a connection's task from another task, without a channel.
//!
//! Client and upstream connections hand work to each other by direct calls on shared
//! state; the other side's task only has to be woken when something is left for it
//! (bytes a socket would not take yet, requests queued while connecting, a connection
//! that may now close). [`TaskWake`] is that signal: a flag and an `AtomicWaker`, so a
//! wake-up costs two atomic operations and none is lost between a check and a wait.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

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

    /// Completes once [`TaskWake::wake`] was called since the last completion.
    pub(crate) fn woken(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.flag.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.flag.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
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
