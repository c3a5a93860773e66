//! Which instance a scale-in drains, and why: a starting one first (it serves nobody),
//! then the ready one with the fewest WebSockets and sticky sessions, then the fewest
//! requests in flight, then the youngest. Also the per-instance count of recent sticky
//! requests this choice reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::instance::{Instance, Phase};

/// Sticky requests are counted over windows of this length: an instance's sessions are
/// the pinned requests of the last full window or of the current one, whichever is more.
pub const STICKY_WINDOW: Duration = Duration::from_secs(60);

/// What the choice looks at, for one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub ready: bool,
    pub websockets: u64,
    /// Requests pinned to it by sticky sessions lately (see `STICKY_WINDOW`).
    pub sticky: u64,
    pub in_flight: u64,
    pub uptime: Duration,
}

impl Candidate {
    pub fn of(inst: &Instance, now: Instant) -> Candidate {
        let s = &inst.backend.stats;
        let info = inst.info();
        let websockets = s.websockets.load(Ordering::Relaxed);
        Candidate {
            id: inst.id.clone(),
            ready: inst.is_ready(),
            websockets,
            sticky: info.sticky_recent(s.pinned.load(Ordering::Relaxed)),
            in_flight: s.active.load(Ordering::Relaxed),
            uptime: now.saturating_duration_since(info.started_at),
        }
    }

    /// The order of the choice: lowest first.
    fn key(&self) -> (bool, u64, u64, Duration) {
        (
            self.ready,
            self.websockets + self.sticky,
            self.in_flight,
            self.uptime,
        )
    }

    fn json(&self, why: &str) -> Value {
        json!({
            "instance": self.id,
            "state": if self.ready { "ready" } else { "starting" },
            "websockets": self.websockets,
            "sticky_requests": self.sticky,
            "in_flight": self.in_flight,
            "uptime_seconds": self.uptime.as_secs(),
            "why": why,
        })
    }
}

/// The candidate to drain (its index) and why, as the event shows it.
pub fn choose(candidates: &[Candidate]) -> Option<(usize, Value)> {
    let (idx, victim) = candidates.iter().enumerate().min_by_key(|(_, c)| c.key())?;
    let runner_up = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, c)| c)
        .min_by_key(|c| c.key());
    let why = match runner_up {
        None => "the only instance left".to_string(),
        Some(_) if !victim.ready => "still starting: serves nobody".to_string(),
        Some(next) => {
            let (a, b) = (victim.key(), next.key());
            if a.1 < b.1 {
                format!(
                    "fewest WebSockets and sticky sessions ({} + {}, next {} + {})",
                    victim.websockets, victim.sticky, next.websockets, next.sticky
                )
            } else if a.2 < b.2 {
                format!(
                    "fewest requests in flight ({}, next {}) of those with the fewest WebSockets and sticky sessions ({})",
                    victim.in_flight,
                    next.in_flight,
                    a.1
                )
            } else {
                format!(
                    "youngest (up {}s, next {}s) of those with the fewest WebSockets and sticky sessions ({}) and requests in flight ({})",
                    victim.uptime.as_secs(),
                    next.uptime.as_secs(),
                    a.1,
                    a.2
                )
            }
        }
    };
    let json = victim.json(&why);
    Some((idx, json))
}

/// The instances a scale-in may drain (running, or waiting to restart), with the facts.
pub fn candidates(instances: &[Arc<Instance>], now: Instant) -> Vec<(Arc<Instance>, Candidate)> {
    instances
        .iter()
        .filter(|i| matches!(i.info().phase, Phase::Running | Phase::Crashed))
        .map(|i| (i.clone(), Candidate::of(i, now)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, ready: bool, ws: u64, sticky: u64, inflight: u64, up: u64) -> Candidate {
        Candidate {
            id: id.into(),
            ready,
            websockets: ws,
            sticky,
            in_flight: inflight,
            uptime: Duration::from_secs(up),
        }
    }

    fn pick(cs: &[Candidate]) -> (String, String) {
        let (i, v) = choose(cs).expect("a victim");
        (
            cs[i].id.clone(),
            v["why"].as_str().unwrap_or("").to_string(),
        )
    }

    #[test]
    fn starting_first_then_sessions_then_in_flight_then_youngest() {
        let (id, why) = pick(&[
            c("a", true, 0, 0, 0, 100),
            c("b", false, 0, 0, 0, 5),
            c("c", true, 0, 0, 0, 1),
        ]);
        assert_eq!(
            (id.as_str(), why.as_str()),
            ("b", "still starting: serves nobody")
        );
        // A WebSocket or a sticky session outweighs any number of short requests.
        let (id, why) = pick(&[
            c("a", true, 1, 0, 0, 100),
            c("b", true, 0, 3, 0, 100),
            c("c", true, 0, 0, 9, 100),
        ]);
        assert_eq!(id, "c");
        assert!(
            why.starts_with("fewest WebSockets and sticky sessions (0 + 0, next 1 + 0)"),
            "{why}"
        );
        let (id, why) = pick(&[c("a", true, 0, 0, 4, 100), c("b", true, 0, 0, 2, 100)]);
        assert_eq!(id, "b");
        assert!(
            why.starts_with("fewest requests in flight (2, next 4)"),
            "{why}"
        );
        let (id, why) = pick(&[c("a", true, 0, 0, 0, 100), c("b", true, 0, 0, 0, 30)]);
        assert_eq!(id, "b");
        assert!(why.starts_with("youngest (up 30s, next 100s)"), "{why}");
        let (id, why) = pick(&[c("a", true, 2, 2, 2, 1)]);
        assert_eq!((id.as_str(), why.as_str()), ("a", "the only instance left"));
        assert!(choose(&[]).is_none());
    }
}
