//! Request coalescing: the first miss for a key goes to the backend (the leader, holding a
//! `Flight`); concurrent misses for it wait until the leader's response is stored or given
//! up (bounded), then look again.
//!
//! The map is locked only on a miss or a refresh (never on a hit), for a lookup or an
//! insert.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The requests to a backend in flight, by primary key.
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// Held by the leader; dropped when its response is stored or will not be, which wakes the
/// waiters.
#[derive(Debug)]
pub struct Flight {
    cache: Arc<super::Cache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Ok(mut map) = self.cache.flights.map.lock() {
            map.remove(&self.key);
        }
    }
}

/// Either the lead for `key`, or someone else's flight to wait for.
pub enum Joined {
    Lead(Flight),
    Wait(watch::Receiver<()>),
}

impl Flights {
    pub fn join(cache: &Arc<super::Cache>, key: &str) -> Joined {
        let Ok(mut map) = cache.flights.map.lock() else {
            // Poisoned (a panic while holding it, which the code above cannot do): lead.
            let (tx, _) = watch::channel(());
            return Joined::Lead(Flight {
                cache: cache.clone(),
                key: String::new(),
                _done: tx,
            });
        };
        if let Some(rx) = map.get(key) {
            return Joined::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_string(), rx);
        Joined::Lead(Flight {
            cache: cache.clone(),
            key: key.to_string(),
            _done: tx,
        })
    }

    /// Whether a flight for `key` is under way.
    pub fn busy(&self, key: &str) -> bool {
        self.map.lock().is_ok_and(|m| m.contains_key(key))
    }
}

/// Wait for the leader to finish, at most `bound`.
pub async fn wait(mut rx: watch::Receiver<()>, bound: Duration) {
    // `changed` ends with an error when the leader's sender is dropped: what ends the wait.
    let _ = tokio::time::timeout(bound, rx.changed()).await;
}
