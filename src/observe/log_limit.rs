//! Rate-limited log lines: one cause (a call site) logs at most
//! [`LINES_PER_SECOND`] lines a second; the next line it logs after a quiet spell says
//! how many similar lines were suppressed. Fifty clients sending garbage thus cost a
//! handful of log lines a second, not a thousand.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::clock::now_ms;

/// Lines one call site may log per second.
pub(crate) const LINES_PER_SECOND: u32 = 5;

/// The budget of one call site (see [`rate_limited!`](crate::observe::rate_limited)).
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    window_start_ms: AtomicU64,
    in_window: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter with a full budget.
    pub(crate) const fn new() -> Self {
        LogLimiter {
            window_start_ms: AtomicU64::new(0),
            in_window: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines suppressed
    /// since the last one logged, or `None` to suppress this one.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= 1000
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs like `tracing::event!` at most [`LINES_PER_SECOND`] times a second per call
/// site, adding `similar_messages_suppressed = N` after a burst was cut.
macro_rules! rate_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::observe::log_limit::LogLimiter =
            $crate::observe::log_limit::LogLimiter::new();
        match LIMIT.allow() {
            Some(0) => tracing::event!($level, $($arg)+),
            Some(n) => tracing::event!($level, similar_messages_suppressed = n, $($arg)+),
            None => {}
        }
    }};
}
pub(crate) use rate_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_cut_and_the_next_window_reports_the_count() {
        let l = LogLimiter::new();
        let allowed = (0..100).filter(|_| l.allow_at(5_000).is_some()).count();
        assert_eq!(allowed, LINES_PER_SECOND as usize);
        assert_eq!(l.allow_at(5_500), None);
        assert_eq!(l.allow_at(6_001), Some(96));
        assert_eq!(l.allow_at(6_002), Some(0));
    }
}
