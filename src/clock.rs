//! Monotonic clock readings that fit in a word: milliseconds for atomics, a
//! nanosecond [`Stamp`] for latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use std::time::Duration;
use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (monotonic). Reads tokio's clock,
/// which is the system's monotonic clock except in tests that pause time.
pub(crate) fn now_ms() -> u64 {
    let start = *START.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(start).as_millis() as u64
}

/// An instant as nanoseconds since this process's first clock reading: a request's
/// start and its response's read time, taken once per read, so that a latency is one
/// subtraction of two words (an `Instant` difference costs about 35 instructions, once
/// per response).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// The stamp of `at` (instants before the process's first reading count as that).
    pub(crate) fn of(at: Instant) -> Stamp {
        let start = *START.get_or_init(|| at);
        Stamp(u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX))
    }

    /// The time from `earlier` to this stamp (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Whether the [`now_ms`] instant stored in `until` (0: none) is still ahead. Reads the
/// clock only while one is set, and clears one found past, so the common case (never
/// set, or over) costs one relaxed load: load balancers ask this of every endpoint on
/// every request. A store racing the clear is not lost: the clear only replaces the
/// exact value it found past.
pub(crate) fn until_in_future(until: &AtomicU64) -> bool {
    let at = until.load(Ordering::Relaxed);
    if at == 0 {
        return false;
    }
    if at > now_ms() {
        return true;
    }
    let _ = until.compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_ahead_until_it_passes_and_is_then_cleared() {
        let until = AtomicU64::new(0);
        assert!(!until_in_future(&until));
        until.store(now_ms() + 1_000, Ordering::Relaxed);
        assert!(until_in_future(&until));
        tokio::time::advance(std::time::Duration::from_millis(999)).await;
        assert!(until_in_future(&until));
        tokio::time::advance(std::time::Duration::from_millis(2)).await;
        assert!(!until_in_future(&until));
        assert_eq!(until.load(Ordering::Relaxed), 0, "cleared once past");
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_measure_the_time_between_their_instants() {
        let before = Instant::now();
        tokio::time::advance(Duration::from_micros(1_500)).await;
        let after = Instant::now();
        let (a, b) = (Stamp::of(before), Stamp::of(after));
        assert_eq!(b.since(a), Duration::from_micros(1_500));
        assert_eq!(a.since(b), Duration::ZERO, "never negative");
        assert_eq!(
            Stamp::of(after + Duration::from_secs(3)).since(b),
            Duration::from_secs(3)
        );
    }
}
