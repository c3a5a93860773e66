//! When to ask a responder again: at the middle of a staple's validity (at most every
//! `MAX_REFRESH`, with jitter so a fleet does not ask at once), and after a failure with an
//! exponential backoff; and whether a staple held is still fit to serve.

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait between two successful fetches.
pub const MAX_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// The wait when a response has no nextUpdate.
pub const NO_NEXT_UPDATE: Duration = Duration::from_secs(3600);
/// The first retry after a failure, doubled per failure up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The next look at a revoked certificate.
pub const REVOKED_RECHECK: Duration = Duration::from_secs(3600);

/// `wait` spread by +-10% (`jitter` in [0, 1)).
fn spread(wait: Duration, jitter: f64) -> Duration {
    wait.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

/// The wait before refreshing a staple valid from `this_update` to `next_update` (Unix
/// seconds), fetched at `now`: until the middle of its validity (before its end).
pub fn refresh_in(this_update: i64, next_update: Option<i64>, now: i64, jitter: f64) -> Duration {
    let Some(next) = next_update else {
        return spread(NO_NEXT_UPDATE, jitter);
    };
    let middle = this_update + (next - this_update).max(0) / 2;
    // Fetched past the middle (a responder serving old responses): half of what is left.
    let secs = if now < middle {
        middle - now
    } else {
        (next - now) / 2
    };
    let wait = Duration::from_secs(secs.max(1) as u64).min(MAX_REFRESH);
    spread(wait, jitter).max(Duration::from_secs(1))
}

/// The wait after the `failures`-th failure in a row (1, 2, ...).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    spread(doubled.min(MAX_BACKOFF), jitter)
}

/// A staple served for one certificate.
#[derive(Debug, Clone)]
pub struct Held {
    pub this_update: i64,
    pub next_update: Option<i64>,
}

impl Held {
    /// Still fit to serve at `now` (Unix seconds).
    pub fn valid(&self, now: i64) -> bool {
        self.next_update.is_none_or(|n| n > now)
    }
}

/// What is known of one certificate's OCSP state.
#[derive(Debug)]
pub struct Slot {
    pub held: Option<Held>,
    pub next_attempt: Instant,
    pub failures: u32,
    pub revoked: bool,
}

impl Slot {
    pub fn new(now: Instant) -> Slot {
        Slot {
            held: None,
            next_attempt: now,
            failures: 0,
            revoked: false,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_attempt
    }

    /// A good response was stapled.
    pub fn good(&mut self, held: Held, now: Instant, unix_now: i64, jitter: f64) {
        self.next_attempt = now + refresh_in(held.this_update, held.next_update, unix_now, jitter);
        self.held = Some(held);
        self.failures = 0;
        self.revoked = false;
    }

    /// The certificate is revoked: no staple.
    pub fn revoked(&mut self, now: Instant) {
        self.held = None;
        self.failures = 0;
        self.revoked = true;
        self.next_attempt = now + REVOKED_RECHECK;
    }

    /// The fetch failed: the staple held is kept while valid. Returns whether to keep it.
    pub fn failed(&mut self, now: Instant, unix_now: i64, jitter: f64) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = now + backoff(self.failures, jitter);
        if self.held.as_ref().is_some_and(|h| !h.valid(unix_now)) {
            self.held = None;
        }
        self.held.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_the_middle_of_the_validity_never_past_its_end() {
        // A 7-day response fetched at once: refreshed after 3.5 days, +-10%.
        let week = 7 * 86_400;
        let wait = refresh_in(1_000, Some(1_000 + week), 1_000, 0.5);
        assert_eq!(wait, Duration::from_secs(week as u64 / 2).min(MAX_REFRESH));
        // One minute of validity: about 30 s.
        let wait = refresh_in(1_000, Some(1_060), 1_000, 0.0);
        assert_eq!(wait, Duration::from_secs(27));
        // Fetched late in its validity: before it ends.
        let wait = refresh_in(1_000, Some(1_060), 1_050, 1.0);
        assert!(wait <= Duration::from_secs(10), "{wait:?}");
        assert_eq!(refresh_in(1_000, None, 1_000, 0.5), NO_NEXT_UPDATE);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(5, 0.5), Duration::from_secs(16));
        assert_eq!(backoff(40, 0.5), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_a_valid_staple_and_drops_an_expired_one() {
        let start = Instant::now();
        let mut slot = Slot::new(start);
        assert!(slot.due(start));
        let held = Held {
            this_update: 1_000,
            next_update: Some(1_060),
        };
        slot.good(held, start, 1_000, 0.5);
        assert!(!slot.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!slot.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            slot.due(Instant::now()),
            "refreshed at the middle of the validity"
        );
        // The responder is down: the staple, still valid, stays; retry after 1 s, then 2 s.
        assert!(slot.failed(Instant::now(), 1_031, 0.5));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!slot.due(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(slot.due(Instant::now()));
        assert!(slot.failed(Instant::now(), 1_032, 0.5));
        assert_eq!(slot.failures, 2);
        // Past its nextUpdate it is dropped.
        assert!(!slot.failed(Instant::now(), 1_060, 0.5));
        assert!(slot.held.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_certificate_is_looked_at_again_later() {
        let mut slot = Slot::new(Instant::now());
        slot.revoked(Instant::now());
        assert!(slot.held.is_none());
        tokio::time::advance(REVOKED_RECHECK - Duration::from_secs(1)).await;
        assert!(!slot.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(slot.due(Instant::now()));
    }
}
