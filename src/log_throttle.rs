//! Rate-limited WARN lines: at most one line per `WINDOW` from one source (a backend, a
//! pool); the lines held back meanwhile are counted, and the next line that goes out says
//! "N more like this in the last Xs". A backend killed under thousands of requests a second
//! writes a line a second, not thousands. Two atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One line per source per second.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The lines held back before the one now allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub count: u64,
    /// Since the last line that went out.
    pub since: Duration,
}

/// The throttle of one source's log lines.
#[derive(Debug)]
pub struct LogThrottle {
    epoch: Instant,
    /// When the next line may go out (ns since `epoch`); 0: at once.
    next_ns: AtomicU64,
    held: AtomicU64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle {
            epoch: Instant::now(),
            next_ns: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }
}

impl LogThrottle {
    /// May a line go out now? `Some` with what was held back since the last one; `None`:
    /// the line is counted and held back.
    pub fn admit(&self) -> Option<Held> {
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
            + 1;
        let next = self.next_ns.load(Ordering::Relaxed);
        let window = WINDOW.as_nanos() as u64;
        if now >= next
            && self
                .next_ns
                .compare_exchange(next, now + window, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let count = self.held.swap(0, Ordering::AcqRel);
            let last = next.saturating_sub(window);
            let since = Duration::from_nanos(if next == 0 { 0 } else { now - last });
            return Some(Held { count, since });
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `tracing::warn!` through a `LogThrottle`: `warn_throttled!(throttle, field = value, ...;
/// "message")`. A line after held-back ones carries `held = N` and says so in its message.
macro_rules! warn_throttled {
    ($throttle:expr, $($field:tt)*) => {
        $crate::log_throttle::warn_throttled!(@split $throttle, [] $($field)*)
    };
    (@split $throttle:expr, [$($fields:tt)*] ; $msg:literal) => {
        if let Some(held) = $throttle.admit() {
            if held.count == 0 {
                tracing::warn!($($fields)*, $msg);
            } else {
                tracing::warn!(
                    $($fields)*, held = held.count,
                    "{} ({} more like this in the last {:.1}s)",
                    $msg,
                    held.count,
                    held.since.as_secs_f64()
                );
            }
        }
    };
    (@split $throttle:expr, [$($fields:tt)*] $next:tt $($rest:tt)*) => {
        $crate::log_throttle::warn_throttled!(@split $throttle, [$($fields)* $next] $($rest)*)
    };
}
pub(crate) use warn_throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_a_window_and_a_count_of_the_rest() {
        let t = LogThrottle::default();
        assert_eq!(
            t.admit(),
            Some(Held {
                count: 0,
                since: Duration::ZERO
            })
        );
        for _ in 0..4473 {
            assert_eq!(t.admit(), None);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held = t.admit().expect("a new window");
        assert_eq!(held.count, 4473);
        assert_eq!(held.since, Duration::from_millis(1500));
        assert_eq!(t.admit(), None);
        tokio::time::sleep(WINDOW).await;
        assert_eq!(t.admit().map(|h| h.count), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_macro_logs_through_the_throttle() {
        let t = LogThrottle::default();
        for _ in 0..3 {
            warn_throttled!(t, backend = "127.0.0.1:1", attempt = 1; "backend failed");
        }
        tokio::time::sleep(WINDOW).await;
        assert_eq!(t.admit().map(|h| h.count), Some(2));
    }
}
