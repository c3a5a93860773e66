//! The control loop of one autoscaled pool: every `interval` (or at once on demand) it
//! reads the signals, asks the policy, starts instances, drains and stops others, and
//! publishes the instance set to the runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::instance::{self, Instance, Phase};
use super::policy::{Decision, Policy, Signals};
use super::shared::{Coordination, NodeSignals};
use crate::config::Autoscale;
use crate::procstat;
use crate::runtime::{ManagedBackend, Pool, Runtime};

/// Scaling events kept per pool.
pub const MAX_EVENTS: usize = 100;

/// One change of a pool's size.
#[derive(Debug, Clone)]
pub struct ScalingEvent {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub signals: Value,
    /// Scale-in: each drained instance and why it was chosen (`victim.rs`).
    pub victims: Vec<Value>,
}

impl ScalingEvent {
    pub fn json(&self) -> Value {
        let mut v = json!({
            "at_ms": self.at_ms, "from": self.from, "to": self.to, "reason": self.reason,
            "signals": self.signals,
        });
        if !self.victims.is_empty() {
            v["victims"] = Value::Array(self.victims.clone());
        }
        v
    }
}

/// Everything about one pool's scaling, shared by its loop and the admin API.
pub struct PoolScaler {
    pub pool: String,
    pub state: Mutex<ScalerState>,
    /// Wakes the loop early (manual scaling, cold requests, shutdown).
    pub wake: Notify,
    /// Re-read the members now (provider `command`).
    pub refresh: Notify,
    pub scale_ups: AtomicU64,
    pub scale_downs: AtomicU64,
}

pub struct ScalerState {
    pub cfg: Arc<Autoscale>,
    pub policy: Policy,
    pub instances: Vec<Arc<Instance>>,
    pub desired: u32,
    pub last: Option<Decision>,
    pub last_signals: Signals,
    pub events: VecDeque<ScalingEvent>,
    pub next_seq: u32,
    pub stopped: bool,
    last_tick: Option<(Instant, u64)>,
    /// This node's id in the fleet (empty without shared state).
    pub node_id: String,
    /// Shared scaling (`autoscale.shared`): leader, token, fleet decision.
    pub coord: Coordination,
    /// This node's raw signals, published to the fleet.
    pub node_signals: NodeSignals,
    /// The fleet's signals at the leader's last decision (leader only).
    pub fleet_signals: Option<Signals>,
    pub pool_name: String,
    /// Predictive pre-scaling: what was learnt, and the last forecast or note.
    pub predictor: super::predict::Predictor,
    pub prediction: Option<String>,
    /// Provider `command`: the members (from `list` or DNS).
    pub members: Vec<ManagedBackend>,
    /// Provider `command`: the size `scale` last set.
    pub requested: Option<u32>,
    /// Provider `command`: a `scale` run is under way.
    pub scaling: bool,
    /// `target.prometheus` / `target.redis_list`: their last readings.
    pub external: super::external::Readings,
}

impl ScalerState {
    /// Responses/s since the last call (0 on the first).
    pub fn rate(&mut self, now: Instant, total: u64) -> f64 {
        let rps = match self.last_tick {
            Some((at, prev)) => {
                let secs = now.saturating_duration_since(at).as_secs_f64().max(0.001);
                total.saturating_sub(prev) as f64 / secs
            }
            None => 0.0,
        };
        self.last_tick = Some((now, total));
        rps
    }
}

/// The pool's latency histogram over the last `secs`, as (bucket, count) pairs.
pub fn latency_buckets(pool: Option<&Arc<Pool>>, now: Instant, secs: u64) -> Vec<(u16, u64)> {
    let mut acc = [0u64; crate::runtime::stats::BUCKETS];
    if let Some(p) = pool {
        p.stats.window.merge_into(&mut acc, now, secs);
    }
    acc.iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (i as u16, *c))
        .collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PoolScaler {
    pub fn new(pool: &str, cfg: Arc<Autoscale>) -> Arc<PoolScaler> {
        Arc::new(PoolScaler {
            pool: pool.to_string(),
            state: Mutex::new(ScalerState {
                desired: cfg.min,
                cfg,
                policy: Policy::default(),
                instances: Vec::new(),
                last: None,
                last_signals: Signals::default(),
                events: VecDeque::new(),
                next_seq: 1,
                stopped: false,
                last_tick: None,
                node_id: String::new(),
                coord: Coordination::default(),
                node_signals: NodeSignals::default(),
                fleet_signals: None,
                pool_name: pool.to_string(),
                predictor: Default::default(),
                prediction: None,
                members: Vec::new(),
                requested: None,
                scaling: false,
                external: Default::default(),
            }),
            wake: Notify::new(),
            refresh: Notify::new(),
            scale_ups: AtomicU64::new(0),
            scale_downs: AtomicU64::new(0),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ScalerState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Run until the pool is stopped.
    pub async fn run(self: Arc<Self>, runtime: Arc<Runtime>) {
        // The first decision at once: start `min` instances.
        self.tick(&runtime);
        loop {
            let interval = self.lock().cfg.interval;
            let demand = runtime.snapshot().pool(&self.pool).map(|p| p.stats.clone());
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = async {
                    match &demand {
                        Some(s) => s.demand_notify.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            if self.lock().stopped {
                return;
            }
            self.tick(&runtime);
        }
    }

    /// One evaluation: signals, decision, actions (by the pool's provider).
    pub fn tick(self: &Arc<Self>, runtime: &Arc<Runtime>) {
        let now = Instant::now();
        let mut st = self.lock();
        super::provider::of(&st.cfg.provider).tick(self, &mut st, runtime, now);
    }

    /// The `process` provider's evaluation: local instances started, drained and stopped.
    pub(super) fn tick_instances(
        self: &Arc<Self>,
        st: &mut ScalerState,
        runtime: &Arc<Runtime>,
        now: Instant,
    ) {
        st.instances.retain(|i| i.info().phase != Phase::Stopped);
        for i in &st.instances {
            i.note_sticky(now);
        }
        self.note_start_failures(st, runtime);
        let signals = self.signals(st, runtime, now);
        let decision = self.decide(st, &signals, now);
        let capacity = signals.ready + signals.starting;
        st.last_signals = signals;
        st.desired = decision.desired;
        if decision.desired != capacity {
            let (from, to) = (capacity, decision.desired);
            tracing::info!(pool = %self.pool, from, to, reason = %decision.reason, "scaling");
            let mut victims = Vec::new();
            if to > from {
                self.scale_ups.fetch_add(1, Ordering::Relaxed);
                for _ in from..to {
                    self.start_instance(st, runtime);
                }
            } else {
                self.scale_downs.fetch_add(1, Ordering::Relaxed);
                for _ in to..from {
                    victims.extend(self.drain_one(st, runtime, now));
                }
            }
            let event = ScalingEvent {
                at_ms: now_ms(),
                from,
                to,
                reason: decision.reason.clone(),
                signals: signals_json(&signals),
                victims,
            };
            if st.events.len() == MAX_EVENTS {
                st.events.pop_front();
            }
            st.events.push_back(event);
            crate::alerts::scaling(&runtime.alerts, &self.pool, from, to, &decision.reason);
            self.publish(st, runtime);
        }
        st.last = Some(decision);
    }

    /// The local policy, or with `shared`: this node's share of the leader's decision (and,
    /// while the shared state does not answer, the local policy never below that share).
    pub(super) fn decide(&self, st: &mut ScalerState, signals: &Signals, now: Instant) -> Decision {
        let mut limits = super::schedule::limits_now(&st.cfg);
        if !st.cfg.shared || st.node_id.is_empty() {
            return predicted(st, &limits, signals, now);
        }
        if st.coord.connected && super::provider::of(&st.cfg.provider).members_shared() {
            // Every node sees every member: the size is the fleet's (only the leader runs
            // `scale`).
            if let Some(d) = &st.coord.decision {
                return Decision {
                    desired: d.desired,
                    reason: format!(
                        "fleet: {} by leader {} (token {}): {}",
                        d.desired, d.leader, d.token, d.reason
                    ),
                    panic: false,
                };
            }
        }
        if st.coord.connected {
            if let Some((share, i, n)) = st.coord.share(&st.node_id) {
                st.coord.last_share = share;
                let d = st.coord.decision.as_ref();
                let (desired, leader, token) =
                    d.map_or((0, "", 0), |d| (d.desired, d.leader.as_str(), d.token));
                return Decision {
                    desired: share,
                    reason: format!(
                        "fleet: {desired} by leader {leader} (token {token}); share of node {} of {n}",
                        i + 1
                    ),
                    panic: false,
                };
            }
            // Not yet counted by the leader: keep what runs.
            let keep = signals.ready + signals.starting;
            return Decision {
                desired: keep,
                reason: "fleet: waiting for the leader's decision".into(),
                panic: false,
            };
        }
        if st.coord.rounds == 0 {
            return Decision {
                desired: signals.ready + signals.starting,
                reason: "fleet: waiting for the first round with the shared state".into(),
                panic: false,
            };
        }
        // Never below the last share; the configured min before any share was known.
        let floor = if st.coord.decision.is_some() {
            st.coord.last_share
        } else {
            limits.min
        };
        limits.min = floor.min(limits.max);
        let mut d = predicted(st, &limits, signals, now);
        d.reason = format!("node-local (shared state unreachable): {}", d.reason);
        d
    }

    fn signals(&self, st: &mut ScalerState, runtime: &Runtime, now: Instant) -> Signals {
        let total: u64 = st
            .instances
            .iter()
            .map(|i| i.backend.stats.total_responses())
            .sum();
        let elapsed = st
            .last_tick
            .map(|(at, _)| now.saturating_duration_since(at));
        let rps = st.rate(now, total);
        let active: Vec<&Arc<Instance>> = st
            .instances
            .iter()
            .filter(|i| matches!(i.info().phase, Phase::Running | Phase::Crashed))
            .collect();
        let ready: Vec<&Arc<Instance>> = active.iter().copied().filter(|i| i.is_ready()).collect();
        let n = ready.len().max(1) as f64;
        let inflight: u64 = ready.iter().map(|i| i.load()).sum();

        let snapshot = runtime.snapshot();
        let pool = snapshot.pool(&self.pool);
        let window = st.cfg.interval.as_secs().max(1);
        let p95 = pool
            .map(|p| p.stats.window.summary_recent(now, window))
            .and_then(|s| (s.requests > 0).then_some(s.p95.as_secs_f64() * 1000.0));
        let cold_waiters = pool.map_or(0, |p| p.stats.cold_waiters.load(Ordering::Relaxed));
        // Requests waiting in the pool's `limits:` queue are demand the instances could not take.
        let inflight = inflight + pool.map_or(0, |p| p.queued());
        let (cpu, rss) = usage(&ready, elapsed);
        st.node_signals = NodeSignals {
            node: st.node_id.clone(),
            ready: ready.len() as u32,
            starting: (active.len() - ready.len()) as u32,
            inflight,
            rps,
            latency: latency_buckets(pool, now, window),
            cpu_percent: cpu,
            memory_mb: rss,
            cold_waiters,
            members_shared: false,
        };
        let mut signals = Signals {
            ready: ready.len() as u32,
            starting: (active.len() - ready.len()) as u32,
            inflight_per_instance: inflight as f64 / n,
            rps_per_instance: rps / n,
            p95_latency_ms: p95,
            cpu_percent: cpu,
            memory_mb: rss,
            cold_waiters,
            ..Signals::default()
        };
        st.external.apply(&mut signals);
        signals
    }

    /// Whether no instance of the pool can start: every one (running or waiting to
    /// restart) failed its last start attempt. Requests without a ready backend then get
    /// 503 at once (`PoolStats::start_failing`), until an attempt is under way again.
    fn note_start_failures(&self, st: &ScalerState, runtime: &Runtime) {
        let Some(pool) = runtime.snapshot().pool(&self.pool).cloned() else {
            return;
        };
        let mut live = st
            .instances
            .iter()
            .filter(|i| matches!(i.info().phase, Phase::Running | Phase::Crashed))
            .peekable();
        let failing = live.peek().is_some() && live.all(|i| i.failed_to_start());
        let was = pool.stats.start_failing.swap(failing, Ordering::Relaxed);
        if failing && !was {
            let why = st
                .instances
                .iter()
                .find_map(|i| i.info().last_exit)
                .unwrap_or_default();
            tracing::error!(pool = %self.pool, last = %why, "no instance can start: requests without a ready backend get 503 until one starts");
            pool.stats.ready_notify.notify_waiters();
        } else if was && !failing {
            tracing::info!(pool = %self.pool, "start failures over: an instance is ready or a new one starts");
        }
    }

    fn start_instance(&self, st: &mut ScalerState, runtime: &Runtime) {
        let used: Vec<u16> = st.instances.iter().map(|i| i.port).collect();
        let Some((lo, hi)) = st.cfg.provider.ports() else {
            return;
        };
        let Some(port) = (lo..=hi).find(|p| !used.contains(p) && port_free(*p)) else {
            tracing::error!(pool = %self.pool, "no free port left in the autoscale range");
            return;
        };
        let id = format!("{}-{}", self.pool, st.next_seq);
        st.next_seq += 1;
        let stats = runtime.snapshot().pool(&self.pool).map(|p| p.stats.clone());
        let inst = instance::launch(st.cfg.clone(), &self.pool, id, port, runtime.workers, stats);
        st.instances.push(inst);
    }

    /// Scale in by one, chosen by `victim::choose`; returns the victim and why.
    fn drain_one(
        self: &Arc<Self>,
        st: &mut ScalerState,
        runtime: &Arc<Runtime>,
        now: Instant,
    ) -> Option<Value> {
        let candidates = super::victim::candidates(&st.instances, now);
        let facts: Vec<_> = candidates.iter().map(|(_, c)| c.clone()).collect();
        let (idx, why) = super::victim::choose(&facts)?;
        let victim = candidates[idx].0.clone();
        victim.set_phase(Phase::Draining);
        victim.backend.stats.draining.store(true, Ordering::Relaxed);
        tracing::info!(pool = %self.pool, instance = %victim.id, in_flight = victim.load(), why = %why["why"].as_str().unwrap_or(""), "draining instance");
        tokio::spawn(drain(
            self.clone(),
            victim,
            runtime.clone(),
            st.cfg.drain_timeout,
        ));
        Some(why)
    }

    /// Hand the current instance set to the runtime (one snapshot swap).
    pub fn publish(&self, st: &ScalerState, runtime: &Runtime) {
        let managed = st
            .instances
            .iter()
            .filter(|i| !matches!(i.info().phase, Phase::Stopping | Phase::Stopped))
            .map(|i| i.backend.clone())
            .collect();
        runtime.set_managed(&self.pool, managed);
    }
}

/// Wait for in-flight requests and WebSockets to finish (or the timeout, after which
/// WebSockets are told to go away), then remove the instance and stop its process.
async fn drain(
    scaler: Arc<PoolScaler>,
    inst: Arc<Instance>,
    runtime: Arc<Runtime>,
    timeout: Duration,
) {
    let pool = &scaler.pool;
    let deadline = Instant::now() + timeout;
    while inst.load() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if inst.load() > 0 {
        tracing::warn!(pool = %pool, instance = %inst.id, in_flight = inst.load(), "drain timeout: closing what is left");
        inst.backend.stats.close_websockets.notify_waiters();
        // Let the tunnels send their close frames.
        let grace = Instant::now() + Duration::from_secs(2);
        while inst.load() > 0 && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    inst.set_phase(Phase::Stopping);
    {
        let st = scaler.lock();
        scaler.publish(&st, &runtime);
    }
    inst.request_stop();
}

/// The policy's decision with the prediction (when `predictive` is on): the forecast may
/// raise the size, and the reason says what it wanted or why it has nothing to say yet.
pub(super) fn predicted(
    st: &mut ScalerState,
    limits: &super::policy::Limits,
    signals: &Signals,
    now: Instant,
) -> Decision {
    let unix = super::schedule::now_utc().timestamp();
    let (forecast, note) =
        super::predict::consult(&mut st.predictor, st.cfg.predictive, limits, signals, unix);
    let mut d = st
        .policy
        .decide_with(limits, signals, forecast.as_ref(), now);
    st.prediction = forecast
        .map(|f| format!("wants {}: {}", f.desired, f.why))
        .or(note.clone());
    if let Some(n) = note {
        d.reason.push_str("; ");
        d.reason.push_str(&n);
    }
    d
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Average CPU% and RSS (MiB) per ready instance since the last tick.
fn usage(ready: &[&Arc<Instance>], elapsed: Option<Duration>) -> (Option<f64>, Option<f64>) {
    let pids: Vec<u32> = ready.iter().filter_map(|i| i.info().pid).collect();
    if pids.is_empty() {
        return (None, None);
    }
    let usage = procstat::tree_usage(&pids);
    let tps = procstat::ticks_per_second() as f64;
    let (mut cpu_sum, mut cpu_n, mut rss_sum, mut rss_n) = (0.0, 0, 0.0, 0);
    for inst in ready {
        let Some(pid) = inst.info().pid else { continue };
        let Some(u) = usage.get(&pid) else { continue };
        let prev = inst.info().cpu_ticks;
        let cpu = match (prev, elapsed) {
            (Some(p), Some(e)) if e.as_secs_f64() > 0.0 => {
                Some(u.cpu_ticks.saturating_sub(p) as f64 / tps / e.as_secs_f64() * 100.0)
            }
            _ => None,
        };
        if let Ok(mut info) = inst.info.lock() {
            info.cpu_ticks = Some(u.cpu_ticks);
            info.rss_bytes = Some(u.rss_bytes);
            info.cpu_percent = cpu;
        }
        if let Some(c) = cpu {
            cpu_sum += c;
            cpu_n += 1;
        }
        rss_sum += u.rss_bytes as f64 / (1024.0 * 1024.0);
        rss_n += 1;
    }
    (
        (cpu_n > 0).then(|| cpu_sum / cpu_n as f64),
        (rss_n > 0).then(|| rss_sum / rss_n as f64),
    )
}

pub fn signals_json(s: &Signals) -> Value {
    let r = |v: f64| (v * 100.0).round() / 100.0;
    json!({
        "ready": s.ready,
        "starting": s.starting,
        "inflight_per_instance": r(s.inflight_per_instance),
        "rps_per_instance": r(s.rps_per_instance),
        "p95_latency_ms": s.p95_latency_ms.map(r),
        "cpu_percent": s.cpu_percent.map(r),
        "memory_mb": s.memory_mb.map(r),
        "cold_waiters": s.cold_waiters,
        "prometheus": s.prometheus.map(r),
        "redis_list": s.redis_list.map(r),
    })
}
