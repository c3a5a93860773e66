//! Cache purges, on this node and across the fleet: a purge is applied to every HTTP cache
//! of the running snapshot, and published in the shared state (a member of the group
//! `cache-purges`, kept 10 s); every node polls that group every 200 ms and applies what it
//! has not seen, so a purge reaches every node within about a quarter of a second.
//!
//! Polling the shared state rather than Redis pub/sub: it runs over the connection the
//! shared state already supervises (standalone, Sentinel or Cluster, with its reconnects
//! and failovers), and a node whose link blinked for less than 10 s still gets the purges it
//! missed (pub/sub delivers at most once, to whoever listens at that moment).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{SharedState, CALL_TIMEOUT};
use crate::cache::Purge;
use crate::runtime::Runtime;

const GROUP: &str = "cache-purges";
/// How long a purge stays published (a node away for longer misses it).
const KEEP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

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
    /// Published purges already applied here (pruned to the live ones).
    seen: Mutex<HashSet<String>>,
}

impl Purges {
    /// With a shared backend other than `memory`, polls for other nodes' purges.
    pub fn start(runtime: &Arc<Runtime>, backend: Arc<dyn SharedState>, node: &str) -> Arc<Purges> {
        let purges = Arc::new(Purges {
            backend,
            node: node.to_string(),
            seq: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
        });
        if purges.backend.kind() != "memory" {
            tokio::spawn(poll(Arc::downgrade(runtime), Arc::downgrade(&purges)));
        }
        purges
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish `purge` to the other nodes; false without a shared backend or when it did
    /// not answer.
    pub async fn broadcast(&self, purge: &Purge) -> bool {
        if self.backend.kind() == "memory" {
            return false;
        }
        let Ok(value) = serde_json::to_string(purge) else {
            return false;
        };
        let id = format!("{}:{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        self.seen().insert(id.clone());
        let put = self.backend.put_member(GROUP, &id, value, KEEP);
        match tokio::time::timeout(CALL_TIMEOUT, put).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cache purge not published to the fleet");
                false
            }
            Err(_) => {
                tracing::warn!("cache purge not published to the fleet: timed out");
                false
            }
        }
    }

    /// Apply the published purges not seen yet.
    async fn catch_up(&self, runtime: &Runtime) {
        let members = self.backend.members(GROUP);
        let Ok(Ok(live)) = tokio::time::timeout(CALL_TIMEOUT, members).await else {
            return;
        };
        let mut fresh = Vec::new();
        {
            let mut seen = self.seen();
            for (id, value) in &live {
                if seen.insert(id.clone()) {
                    fresh.push(value.clone());
                }
            }
            // Own ids stay until they are gone from the group (published, not yet listed).
            let own = format!("{}:", self.node);
            seen.retain(|id| id.starts_with(&own) || live.iter().any(|(l, _)| l == id));
        }
        for value in fresh {
            match serde_json::from_str::<Purge>(&value) {
                Ok(purge) => {
                    let caches = apply(runtime, &purge);
                    tracing::info!(?purge, caches, "cache purge from the fleet applied");
                }
                Err(e) => tracing::warn!(error = %e, "unreadable cache purge in the shared state"),
            }
        }
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
