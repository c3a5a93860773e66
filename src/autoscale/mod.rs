//! The embedded autoscaler: one control loop per pool with `autoscale`, its providers
//! behind one trait (`provider.rs`: `process` starts and stops local instances, `command`
//! runs the user's scripts), manual scaling, and the data behind `/scaling/status` and
//! `/cluster/status`.

pub mod command;
pub mod controller;
pub mod discovery;
pub mod external;
pub mod instance;
pub mod policy;
pub mod predict;
pub mod predict_store;
pub mod process;
pub mod prometheus;
pub mod provider;
pub mod schedule;
pub mod shared;
pub mod victim;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::runtime::Runtime;
use crate::state::SharedState;
use controller::{now_ms, signals_json, PoolScaler};
use instance::Phase;

/// Why a manual scaling request was refused (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManualError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("pool {0:?} has no autoscale section")]
    NotAutoscaled(String),
    #[error("instances must be a non-negative integer, got {0}")]
    Negative(i64),
}

/// Every pool's scaler.
pub struct Autoscaler {
    runtime: Arc<Runtime>,
    pools: Mutex<BTreeMap<String, Arc<PoolScaler>>>,
    /// The shared state and this node's fleet id, for `autoscale.shared` pools.
    state: Option<(Arc<dyn SharedState>, String)>,
}

impl Autoscaler {
    /// Start a loop for each autoscaled pool of the current config (inside a runtime).
    pub fn start(runtime: Arc<Runtime>) -> Arc<Autoscaler> {
        Autoscaler::start_with_state(runtime, None)
    }

    /// Like `start`; pools with `autoscale.shared` coordinate through `state` as node `id`.
    pub fn start_with_state(
        runtime: Arc<Runtime>,
        state: Option<(Arc<dyn SharedState>, String)>,
    ) -> Arc<Autoscaler> {
        let a = Arc::new(Autoscaler {
            runtime,
            pools: Mutex::new(BTreeMap::new()),
            state,
        });
        a.reconcile();
        a
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<PoolScaler>>> {
        match self.pools.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn scaler(&self, pool: &str) -> Option<Arc<PoolScaler>> {
        self.pools().get(pool).cloned()
    }

    /// Follow the config: new autoscaled pools get a loop; changed settings apply to the
    /// running loop (its instances keep running); pools that lost `autoscale` are stopped.
    pub fn reconcile(&self) {
        let snapshot = self.runtime.snapshot();
        let mut pools = self.pools();
        let mut wanted = Vec::new();
        for p in &snapshot.config.pools {
            let Some(cfg) = &p.autoscale else { continue };
            wanted.push(p.name.clone());
            let cfg = Arc::new(cfg.clone());
            match pools.get(&p.name) {
                Some(existing) => {
                    let mut st = existing.lock();
                    if *st.cfg != *cfg {
                        tracing::info!(pool = %p.name, "autoscale settings changed; instances kept");
                        st.cfg = cfg;
                        drop(st);
                        existing.wake.notify_one();
                    }
                }
                None => {
                    let provider = provider::of(&cfg.provider);
                    let scaler = PoolScaler::new(&p.name, cfg);
                    let backend = self.state.as_ref().map(|(b, _)| b.clone());
                    tokio::spawn(external::watch(scaler.clone(), backend));
                    if let Some((backend, id)) = &self.state {
                        scaler.lock().node_id.clone_from(id);
                        tokio::spawn(shared::run(scaler.clone(), backend.clone(), id.clone()));
                        tokio::spawn(predict_store::keep(scaler.clone(), backend.clone()));
                    }
                    provider.spawn_tasks(&scaler, &self.runtime);
                    tokio::spawn(scaler.clone().run(self.runtime.clone()));
                    pools.insert(p.name.clone(), scaler);
                }
            }
        }
        let gone: Vec<String> = pools
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(scaler) = pools.remove(&name) {
                tracing::info!(pool = %name, "pool no longer autoscaled: stopping its instances");
                stop_all(&scaler);
            }
        }
    }

    /// `POST /scaling/manual`: set a size, clamped to [min, max], held for `manual_hold`.
    pub fn manual(&self, pool: &str, instances: i64, reason: &str) -> Result<Value, ManualError> {
        if instances < 0 {
            return Err(ManualError::Negative(instances));
        }
        let Some(scaler) = self.scaler(pool) else {
            let known = self.runtime.snapshot().pool(pool).is_some();
            return Err(if known {
                ManualError::NotAutoscaled(pool.into())
            } else {
                ManualError::UnknownPool(pool.into())
            });
        };
        let (clamped, min, max, hold) = {
            let mut st = scaler.lock();
            let bounds = schedule::limits_now(&st.cfg);
            let (min, max) = (bounds.min, bounds.max);
            let n = (instances.min(u32::MAX as i64) as u32).clamp(min, max.max(min));
            let hold = st.cfg.manual_hold;
            st.policy.set_manual(n, Instant::now(), hold);
            if st.cfg.shared {
                if let Some((backend, _)) = &self.state {
                    // The leader applies it to the fleet-wide size.
                    tokio::spawn(shared::publish_manual(
                        backend.clone(),
                        pool.to_string(),
                        n,
                        hold,
                    ));
                }
            }
            (n, min, max, hold)
        };
        let before = scaler.lock().events.len();
        scaler.tick(&self.runtime);
        let st = scaler.lock();
        let event = (st.events.len() != before)
            .then(|| st.events.back().cloned())
            .flatten();
        tracing::info!(
            pool,
            requested = instances,
            instances = clamped,
            reason,
            "manual scaling"
        );
        Ok(json!({
            "pool": pool,
            "requested": instances,
            "instances": clamped,
            "clamped": clamped as i64 != instances,
            "min": min,
            "max": max,
            "reason": reason,
            "hold_seconds": hold.as_secs(),
            "event": event.map(|e| e.json()),
        }))
    }

    /// `GET /scaling/status`.
    pub fn scaling_status(&self) -> Value {
        let now = Instant::now();
        let wall = schedule::now_utc();
        let pools: Vec<Value> = self
            .pools()
            .values()
            .map(|s| {
                let st = s.lock();
                let bounds = schedule::limits_at(&st.cfg, wall);
                let mut live: Vec<&str> = st.instances.iter().map(|i| i.state()).collect();
                for m in &st.members {
                    live.push(if m.stats.healthy() { "ready" } else { "starting" });
                }
                let count = |name: &str| live.iter().filter(|s| **s == name).count();
                json!({
                    "pool": s.pool,
                    "current": count("ready"),
                    "starting": count("starting") + count("crashed"),
                    "draining": count("draining") + count("stopping"),
                    "desired": st.desired,
                    "min": bounds.min,
                    "max": bounds.max,
                    "schedule": schedule::status_json(&st.cfg, wall),
                    "signals": signals_json(&st.last_signals),
                    "external": st.external.to_json(&st.cfg, now),
                    "last_decision": st.last.as_ref().map(|d| json!({"desired": d.desired, "reason": d.reason, "panic": d.panic})),
                    "prediction": st.cfg.predictive.map(|p| json!({
                        "lookahead_seconds": p.lookahead.as_secs(),
                        "min_history_seconds": p.min_history.as_secs(),
                        "history_seconds": st.predictor.history(wall.timestamp()).as_secs(),
                        "last": st.prediction,
                    })),
                    "manual_hold_seconds": st.policy.manual_until(now).map(|u| (u - now).as_secs()),
                    "provider": st.cfg.provider.kind().name(),
                    "requested": st.requested,
                    "shared": st.cfg.shared,
                    "leader": st.cfg.shared.then(|| st.coord.leader.clone()).flatten(),
                    "is_leader": st.cfg.shared && st.coord.is_leader(now),
                    "fencing_token": st.cfg.shared.then_some(st.coord.token),
                    "fleet": st.cfg.shared.then(|| shared::status_json(&st, &st.node_id)),
                    "events": st.events.iter().rev().map(|e| e.json()).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "pools": pools })
    }

    /// `GET /cluster/status`: every managed instance.
    pub fn cluster_status(&self) -> Value {
        let mut instances = Vec::new();
        for s in self.pools().values() {
            let st = s.lock();
            for i in &st.instances {
                let info = i.info();
                instances.push(json!({
                    "id": i.id,
                    "pool": s.pool,
                    "pid": info.pid,
                    "port": i.port,
                    "address": i.backend.address,
                    "state": i.state(),
                    "uptime_seconds": info.started_at.elapsed().as_secs(),
                    "restarts": info.restarts,
                    "last_exit": info.last_exit,
                    "cpu_percent": info.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
                    "rss_bytes": info.rss_bytes,
                    "in_flight": i.backend.stats.active.load(Ordering::Relaxed),
                    "websockets": i.backend.stats.websockets.load(Ordering::Relaxed),
                }));
            }
            for m in &st.members {
                instances.push(json!({
                    "pool": s.pool,
                    "provider": "command",
                    "address": m.address,
                    "state": if m.stats.healthy() { "ready" } else { "starting" },
                    "in_flight": m.stats.active.load(Ordering::Relaxed),
                    "websockets": m.stats.websockets.load(Ordering::Relaxed),
                }));
            }
        }
        json!({
            "node": { "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "time_ms": now_ms() },
            "instances": instances,
            "nodes": [],
        })
    }

    /// What `/metrics` shows of the autoscaler: instances by state and scaling events of
    /// each pool it runs, and the sizes and last signals of the pools `snapshot` autoscales.
    pub fn counts(&self, snapshot: &crate::runtime::Snapshot) -> crate::metrics::AutoscaleCounts {
        let mut counts = crate::metrics::AutoscaleCounts::default();
        for s in self.pools().values() {
            let st = s.lock();
            for state in ["starting", "ready", "draining", "stopping"] {
                let n = st.instances.iter().filter(|i| i.state() == state).count();
                counts.instances.push((s.pool.clone(), state, n));
            }
            counts.events.push((
                s.pool.clone(),
                s.scale_ups.load(Ordering::Relaxed),
                s.scale_downs.load(Ordering::Relaxed),
            ));
        }
        for p in snapshot
            .config
            .pools
            .iter()
            .filter(|p| p.autoscale.is_some())
        {
            let Some(scaler) = self.scaler(&p.name) else {
                continue;
            };
            let st = scaler.lock();
            counts.pools.push(crate::metrics::AutoscaledPool {
                name: p.name.clone(),
                desired: st.desired,
                min: st.cfg.min,
                max: st.cfg.max,
                signals: st.last_signals.values(),
            });
        }
        counts
    }

    /// Stop every instance (SIGTERM, then SIGKILL after each pool's grace) and wait.
    pub async fn shutdown(&self) {
        let scalers: Vec<Arc<PoolScaler>> = self.pools().values().cloned().collect();
        let mut longest = Duration::ZERO;
        for s in &scalers {
            longest = longest.max(s.lock().cfg.stop_grace);
            stop_all(s);
        }
        let deadline = Instant::now() + longest + Duration::from_secs(2);
        loop {
            let running = scalers.iter().any(|s| {
                s.lock()
                    .instances
                    .iter()
                    .any(|i| i.info().phase != Phase::Stopped)
            });
            if !running || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn stop_all(scaler: &PoolScaler) {
    let mut st = scaler.lock();
    st.stopped = true;
    for i in &st.instances {
        i.request_stop();
    }
    st.desired = 0;
    drop(st);
    scaler.wake.notify_one();
}
