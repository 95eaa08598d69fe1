//! A monotonic millisecond clock that fits in an atomic.

use std::sync::OnceLock;

use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (monotonic). Reads tokio's clock,
/// which is the system's monotonic clock except in tests that pause time.
pub(crate) fn now_ms() -> u64 {
    let start = *START.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(start).as_millis() as u64
}
