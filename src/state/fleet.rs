//! The fleet registry: every node heartbeats its id, addresses, version, uptime, config
//! hash and pool summaries to the shared state with a TTL, and reads the others back.
//! A node that stops heartbeating (or that this node cannot see, without the shared state)
//! is marked unseen after `TTL`, and forgotten `FORGET` later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{bounded, now_ms, pools_hash, SharedState};
use crate::runtime::Runtime;

/// How often a node heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat stays valid.
pub const TTL: Duration = Duration::from_secs(5);
/// How long an unseen node stays listed.
pub const FORGET: Duration = Duration::from_secs(600);
const GROUP: &str = "nodes";

/// Another node as last seen.
struct Other {
    record: Value,
    seen: bool,
    last_seen: Instant,
}

/// This node's view of the fleet.
pub struct Fleet {
    id: String,
    admin: SocketAddr,
    started_ms: u64,
    /// The config hash and the pools hash of the running config.
    hash: Mutex<(String, String)>,
    /// The other nodes by id: their last records, and whether the last read saw them.
    others: Mutex<BTreeMap<String, Other>>,
    /// Nodes seen in the last successful read, this one included (1 before any).
    count: AtomicUsize,
}

/// `AUTOLB_NODE_ID`, or `HOSTNAME:ADMIN_PORT:PID`.
/// The config hash and the pools hash of `config`.
fn hashes(config: &crate::config::Config) -> (String, String) {
    (config.hash.clone(), pools_hash(config))
}

fn node_id(admin: SocketAddr) -> String {
    if let Ok(id) = std::env::var("AUTOLB_NODE_ID") {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}:{}", admin.port(), std::process::id())
}

impl Fleet {
    /// Starts the heartbeat task (it ends when the runtime is dropped).
    pub fn start(
        runtime: &Arc<Runtime>,
        backend: Arc<dyn SharedState>,
        admin: SocketAddr,
    ) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            id: node_id(admin),
            admin,
            started_ms: now_ms(),
            hash: Mutex::new(hashes(&runtime.snapshot().config)),
            others: Mutex::new(BTreeMap::new()),
            count: AtomicUsize::new(1),
        });
        tokio::spawn(heartbeat(
            Arc::downgrade(runtime),
            backend,
            Arc::downgrade(&fleet),
        ));
        fleet
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The running config's hash (`Config::hash`), as `/health` shows it.
    pub fn config_hash(&self) -> String {
        self.hash.lock().map(|h| h.0.clone()).unwrap_or_default()
    }

    /// The hash of routes and pools, which the nodes compare (`config_drift`).
    pub fn pools_hash(&self) -> String {
        self.hash.lock().map(|h| h.1.clone()).unwrap_or_default()
    }

    /// Nodes in the fleet, this one included, as last seen.
    pub fn node_count(&self) -> usize {
        self.count.load(Ordering::Relaxed).max(1)
    }

    /// The other nodes, each with `config_drift`, `seen` and `last_seen_seconds_ago`, and
    /// whether any node seen drifts.
    pub fn others_json(&self) -> (Vec<Value>, bool) {
        let mine = self.pools_hash();
        let mut drift = false;
        let Ok(others) = self.others.lock() else {
            return (Vec::new(), false);
        };
        let nodes = others
            .values()
            .map(|o| {
                let mut n = o.record.clone();
                // A node of an earlier version published its pools hash as `config_hash`.
                let theirs = n.get("pools_hash").unwrap_or(&n["config_hash"]);
                let d = theirs.as_str() != Some(mine.as_str());
                drift |= d && o.seen;
                n["config_drift"] = Value::Bool(d);
                n["seen"] = Value::Bool(o.seen);
                n["last_seen_seconds_ago"] = json!(o.last_seen.elapsed().as_secs());
                n
            })
            .collect();
        (nodes, drift)
    }

    /// The last read of the registry: `Some(records)` of the nodes seen, `None` when the
    /// shared state did not answer (every other node is unseen from here).
    fn saw(&self, list: Option<Vec<(String, Value)>>) {
        let Ok(mut others) = self.others.lock() else {
            return;
        };
        let now = Instant::now();
        for o in others.values_mut() {
            o.seen = false;
        }
        if let Some(list) = list {
            self.count.store(list.len() + 1, Ordering::Relaxed);
            for (id, record) in list {
                others.insert(
                    id,
                    Other {
                        record,
                        seen: true,
                        last_seen: now,
                    },
                );
            }
        }
        others.retain(|_, o| o.seen || o.last_seen.elapsed() < FORGET);
    }

    /// This node's heartbeat record.
    fn record(&self, runtime: &Runtime) -> Value {
        let snap = runtime.snapshot();
        // The pools hash is worked out again only when the config changed: it formats
        // every route and pool (several MB of text at 10,000 routes, about 10 ms of a core
        // every second).
        let known = self
            .hash
            .lock()
            .ok()
            .filter(|h| h.0 == snap.config.hash)
            .map(|h| h.clone());
        let (hash, pools) = match known {
            Some(h) => h,
            None => {
                let fresh = hashes(&snap.config);
                if let Ok(mut h) = self.hash.lock() {
                    *h = fresh.clone();
                }
                fresh
            }
        };
        let pool_list: Vec<Value> = snap
            .pools
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "ready": p.ready_backends(),
                    "total": p.backends.len(),
                })
            })
            .collect();
        let listeners: Vec<Value> = snap
            .config
            .listeners
            .iter()
            .map(|l| json!({ "name": l.name, "listen": l.listen.to_string() }))
            .collect();
        let now = now_ms();
        json!({
            "id": self.id,
            "address": self.admin.to_string(),
            "listeners": listeners,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_ms": self.started_ms,
            "uptime_seconds": now.saturating_sub(self.started_ms) / 1000,
            "config_hash": hash,
            "pools_hash": pools,
            "pools": pool_list,
            "heartbeat_ms": now,
        })
    }
}

async fn heartbeat(runtime: Weak<Runtime>, backend: Arc<dyn SharedState>, fleet: Weak<Fleet>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(rt), Some(fleet)) = (runtime.upgrade(), fleet.upgrade()) else {
            return;
        };
        let record = fleet.record(&rt).to_string();
        drop(rt);
        if !backend.connected()
            || bounded(backend.put_member(GROUP, &fleet.id, record, TTL))
                .await
                .is_err()
        {
            fleet.saw(None);
            continue;
        }
        match bounded(backend.members(GROUP)).await {
            Ok(list) => fleet.saw(Some(
                list.into_iter()
                    .filter(|(id, _)| *id != fleet.id)
                    .filter_map(|(id, v)| serde_json::from_str(&v).ok().map(|v| (id, v)))
                    .collect(),
            )),
            Err(_) => fleet.saw(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            id: "me".into(),
            admin: "127.0.0.1:9001".parse().expect("addr"),
            started_ms: 0,
            hash: Mutex::new(("h".into(), "h".into())),
            others: Mutex::new(BTreeMap::new()),
            count: AtomicUsize::new(1),
        }
    }

    fn seen(f: &Fleet) -> Vec<(String, bool)> {
        f.others_json()
            .0
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap_or("").to_string(),
                    n["seen"] == true,
                )
            })
            .collect()
    }

    #[test]
    fn nodes_are_marked_unseen_then_seen_again() {
        let f = fleet();
        let rec = |id: &str| (id.to_string(), json!({ "id": id, "config_hash": "h" }));
        f.saw(Some(vec![rec("a"), rec("b")]));
        assert_eq!(seen(&f), vec![("a".into(), true), ("b".into(), true)]);
        assert_eq!(f.node_count(), 3);
        // b stops heartbeating.
        f.saw(Some(vec![rec("a")]));
        assert_eq!(seen(&f), vec![("a".into(), true), ("b".into(), false)]);
        assert_eq!(f.node_count(), 2);
        // The shared state does not answer: nobody is seen, the count stays the last one.
        f.saw(None);
        assert_eq!(seen(&f), vec![("a".into(), false), ("b".into(), false)]);
        assert_eq!(f.node_count(), 2);
        f.saw(Some(vec![rec("a"), rec("b")]));
        assert_eq!(seen(&f), vec![("a".into(), true), ("b".into(), true)]);
        // An unseen node with another config does not count as drift.
        let (_, drift) = f.others_json();
        assert!(!drift);
    }
}
