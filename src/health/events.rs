//! A bounded list of recent health events (down, up, ejected, lifted), newest last, shown by
//! `/loadbalancer/status`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many events are kept.
pub const MAX_EVENTS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub pool: String,
    pub backend: String,
    /// `down`, `up`, `ejected`, `ejection_lifted`.
    pub kind: &'static str,
    pub detail: String,
}

/// Written on health transitions only (never per request), read by the admin API.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn push(&self, pool: &str, backend: &str, kind: &'static str, detail: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let event = Event {
            at_ms,
            pool: pool.to_string(),
            backend: backend.to_string(),
            kind,
            detail,
        };
        if let Ok(mut events) = self.events.lock() {
            if events.len() == MAX_EVENTS {
                events.pop_front();
            }
            events.push_back(event);
        }
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest() {
        let log = EventLog::default();
        for i in 0..(MAX_EVENTS + 5) {
            log.push("p", "b", "down", format!("{i}"));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), MAX_EVENTS);
        assert_eq!(recent[0].detail, "5");
        assert_eq!(recent[MAX_EVENTS - 1].detail, format!("{}", MAX_EVENTS + 4));
    }
}
