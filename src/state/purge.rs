//! Cache purges, on this node and across the fleet: a purge is applied to every HTTP cache
//! of the running snapshot and broadcast to the other nodes over Redis pub/sub (channel
//! `autolb:cache-purges`), which apply it as soon as the message arrives.
//!
//! Pub/sub delivers at most once, to whoever listens at that moment, so each purge is also
//! kept for 10 s as a member of the shared-state group `cache-purges`, and every node polls
//! that group once a second: a node whose subscription or link blinked for less than 10 s
//! still applies the purges it missed. Each purge carries an id, and a node applies an id
//! once, whichever way it arrived first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{SharedState, CALL_TIMEOUT};
use crate::cache::Purge;
use crate::runtime::Runtime;

const GROUP: &str = "cache-purges";
/// The pub/sub channel; a message is `{"id": "...", "purge": {admin API body}}`.
pub const CHANNEL: &str = "autolb:cache-purges";
/// How long a purge stays published (a node away for longer misses it).
const KEEP: Duration = Duration::from_secs(10);
/// How often the group is polled for purges whose message was missed.
const POLL: Duration = Duration::from_secs(1);
/// How long an applied id is remembered: past it, the id is gone from the group.
const REMEMBER: Duration = Duration::from_secs(30);

/// Apply `purge` to every cache of the running snapshot; answers how many caches.
pub fn apply(runtime: &Runtime, purge: &Purge) -> usize {
    let snapshot = runtime.snapshot();
    let mut n = 0;
    for (_, cache) in snapshot.caches() {
        cache.store.purge(purge);
        n += 1;
    }
    n
}

/// This node's side of fleet-wide purges.
pub struct Purges {
    backend: Arc<dyn SharedState>,
    node: String,
    seq: AtomicU64,
    /// Ids of the purges applied here (or published from here), with when.
    seen: Mutex<HashMap<String, Instant>>,
}

impl Purges {
    /// With a shared backend other than `memory`, subscribes to the other nodes' purges and
    /// polls for those whose message was missed.
    pub fn start(runtime: &Arc<Runtime>, backend: Arc<dyn SharedState>, node: &str) -> Arc<Purges> {
        let purges = Arc::new(Purges {
            backend,
            node: node.to_string(),
            seq: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
        });
        if purges.backend.kind() != "memory" {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            purges.backend.subscribe(CHANNEL, tx);
            tokio::spawn(listen(Arc::downgrade(runtime), Arc::downgrade(&purges), rx));
            tokio::spawn(poll(Arc::downgrade(runtime), Arc::downgrade(&purges)));
        }
        purges
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is new here (then it is remembered as seen).
    fn first_sight(&self, id: &str) -> bool {
        let mut seen = self.seen();
        seen.retain(|_, at| at.elapsed() < REMEMBER);
        seen.insert(id.to_string(), Instant::now()).is_none()
    }

    /// Publish `purge` to the other nodes (pub/sub, and the group for those that miss the
    /// message); false without a shared backend or when neither reached Redis.
    pub async fn broadcast(&self, purge: &Purge) -> bool {
        if self.backend.kind() == "memory" {
            return false;
        }
        let Ok(value) = serde_json::to_string(purge) else {
            return false;
        };
        let id = format!("{}:{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        self.first_sight(&id);
        // Stored before the message goes out: a node that polls after reading the message
        // finds the id already seen.
        let put = self.backend.put_member(GROUP, &id, value, KEEP);
        let stored = settle("stored", tokio::time::timeout(CALL_TIMEOUT, put).await);
        let message = json!({ "id": id, "purge": purge.to_json() }).to_string();
        let publish = self.backend.publish(CHANNEL, message);
        let sent = settle(
            "published",
            tokio::time::timeout(CALL_TIMEOUT, publish).await,
        );
        stored || sent
    }

    /// Apply one pub/sub message (`{"id", "purge"}`) unless its id was seen.
    fn on_message(&self, runtime: &Runtime, text: &str) {
        let parsed = serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
        let parsed = parsed.and_then(|v| {
            let id = v["id"].as_str().ok_or("no \"id\"")?.to_string();
            Ok((id, Purge::from_json(&v["purge"])?))
        });
        match parsed {
            Ok((id, purge)) => {
                if self.first_sight(&id) {
                    let caches = apply(runtime, &purge);
                    tracing::info!(?purge, caches, %id, "cache purge from the fleet applied (pub/sub)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable cache purge message on {CHANNEL}"),
        }
    }

    /// Apply the published purges not seen yet.
    async fn catch_up(&self, runtime: &Runtime) {
        let members = self.backend.members(GROUP);
        let Ok(Ok(live)) = tokio::time::timeout(CALL_TIMEOUT, members).await else {
            return;
        };
        for (id, value) in live {
            if !self.first_sight(&id) {
                continue;
            }
            match serde_json::from_str::<Purge>(&value) {
                Ok(purge) => {
                    let caches = apply(runtime, &purge);
                    tracing::info!(?purge, caches, %id, "cache purge from the fleet applied (missed message, from the group)");
                }
                Err(e) => tracing::warn!(error = %e, "unreadable cache purge in the shared state"),
            }
        }
    }
}

/// Whether a bounded shared-state call succeeded (logged when not).
fn settle(
    what: &str,
    r: Result<Result<(), super::StateError>, tokio::time::error::Elapsed>,
) -> bool {
    match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cache purge not {what} for the fleet");
            false
        }
        Err(_) => {
            tracing::warn!("cache purge not {what} for the fleet: timed out");
            false
        }
    }
}

async fn listen(
    runtime: Weak<Runtime>,
    purges: Weak<Purges>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    while let Some(text) = rx.recv().await {
        let (Some(runtime), Some(purges)) = (runtime.upgrade(), purges.upgrade()) else {
            return;
        };
        purges.on_message(&runtime, &text);
    }
}

async fn poll(runtime: Weak<Runtime>, purges: Weak<Purges>) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (Some(runtime), Some(purges)) = (runtime.upgrade(), purges.upgrade()) else {
            return;
        };
        purges.catch_up(&runtime).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::Purge;

    #[test]
    fn messages_carry_the_admin_form_of_a_purge() {
        for body in [
            r#"{"url": "https://Shop.example.com/p/42?c=red"}"#,
            r#"{"url": "http://[::1]:8080/x"}"#,
            r#"{"host": "shop.example.com", "path_prefix": "/products/"}"#,
            r#"{"host": "shop.example.com"}"#,
            r#"{"path_prefix": "/static/"}"#,
        ] {
            let purge = Purge::from_json(&serde_json::from_str(body).unwrap()).unwrap();
            assert_eq!(Purge::from_json(&purge.to_json()), Ok(purge), "{body}");
        }
    }
}
