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

/// Written on health transitions only (never per request), read by the admin API; every
/// event is also broadcast to subscribers (alerts), without ever waiting for them.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    subscribers: tokio::sync::broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: Mutex::default(),
            subscribers: tokio::sync::broadcast::Sender::new(MAX_EVENTS),
        }
    }
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
        // No subscriber is not an error; a slow one loses the oldest events (it is told).
        let _ = self.subscribers.send(event.clone());
        if let Ok(mut events) = self.events.lock() {
            if events.len() == MAX_EVENTS {
                events.pop_front();
            }
            events.push_back(event);
        }
    }

    /// Every event pushed from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.subscribers.subscribe()
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
