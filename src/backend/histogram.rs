//! `DurationHistogram`: a Prometheus histogram of durations in atomics, recorded on the hot
//! path without a lock (a backend's time to first byte, a pool's request durations).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of `autolb_request_duration_seconds` and
/// `autolb_backend_response_seconds`: 10 ms apart from 20 ms to 100 ms (50 ms and 90 ms
/// answers land in different buckets), and no more than about 1.5x apart up to 1 s.
pub const HISTOGRAM_BOUNDS: [f64; 25] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations; `counts` has one extra slot for +Inf. Atomics only:
/// recorded on the hot path without a lock.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    pub counts: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    pub sum_us: AtomicU64,
}

impl DurationHistogram {
    #[inline]
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // The first bound >= secs (Prometheus buckets are "less than or equal").
        let idx = HISTOGRAM_BOUNDS.partition_point(|b| *b < secs);
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_tell_50_from_90_ms() {
        let h = DurationHistogram::default();
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(90));
        h.record(Duration::from_secs(60));
        let at = |secs: f64| {
            HISTOGRAM_BOUNDS
                .iter()
                .position(|b| *b == secs)
                .expect("bound")
        };
        assert_eq!(
            h.counts[at(0.05)].load(Ordering::Relaxed),
            1,
            "le is inclusive"
        );
        assert_eq!(h.counts[at(0.09)].load(Ordering::Relaxed), 1);
        assert_eq!(h.counts[HISTOGRAM_BOUNDS.len()].load(Ordering::Relaxed), 1);
        assert!(HISTOGRAM_BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }
}
