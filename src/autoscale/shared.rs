//! One autoscaler for a pool shared by a fleet (`autoscale.shared: true`).
//!
//! Every node publishes its own signals (ready and starting instances, requests in flight,
//! requests/s, its latency histogram) to the shared state each `ROUND`. One leader, elected
//! with a lease (SET NX PX) that carries a fencing token (INCR, only grows), aggregates the
//! fleet's signals every `interval`, runs the policy, and stores the fleet-wide decision with
//! a fenced write that the shared state refuses once a newer leader holds a newer token.
//! Every node (the leader too) reads the stored decision, refuses one with a token older
//! than the newest it has seen, and runs its share of the fleet-wide size: the decision
//! names the nodes it counted, and node `i` of `n` runs `desired / n` instances, plus one
//! when `i < desired % n`.
//!
//! A leader acts only until `LEASE_TTL - MARGIN` after it sent its last successful renewal,
//! so it has stopped before the lease can lapse in the shared state and another node can
//! take it: two leaders never act at once. A killed leader is replaced within `LEASE_TTL`
//! plus one round. Without the shared state a node runs the policy on its own instances,
//! never below its last share (node-local), until the shared state answers again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::controller::{now_ms, signals_json, PoolScaler};
use super::policy::Signals;
use crate::runtime::stats::{bucket_upper_us, BUCKETS};
use crate::state::{bounded, SharedState};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often a node publishes, renews and reads.
pub const ROUND: Duration = Duration::from_secs(1);
/// A leader stops acting this long before its lease could lapse in the shared state.
pub const MARGIN: Duration = Duration::from_millis(750);
/// How long published signals stay valid.
const SIGNALS_TTL: Duration = Duration::from_secs(5);
/// How long a stored decision stays valid.
const DECISION_TTL: Duration = Duration::from_secs(60);

/// One node's raw signals for a pool, as published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSignals {
    pub node: String,
    pub ready: u32,
    pub starting: u32,
    /// Requests and WebSockets in flight over the node's ready instances.
    pub inflight: u64,
    /// Requests/s over the node's instances.
    pub rps: f64,
    /// Latency histogram of the last interval: (bucket, count), buckets of `runtime::stats`.
    pub latency: Vec<(u16, u64)>,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    pub cold_waiters: u64,
    /// Provider `command`: every node sees the same members (counted once, not summed).
    #[serde(default)]
    pub members_shared: bool,
}

/// The leader's fleet-wide decision, as stored (fenced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDecision {
    pub desired: u32,
    pub token: u64,
    pub leader: String,
    pub reason: String,
    pub at_ms: u64,
    /// The nodes counted, sorted: the order of the shares.
    pub nodes: Vec<String>,
}

/// What this node knows about the shared scaling of one pool.
#[derive(Debug, Default)]
pub struct Coordination {
    pub connected: bool,
    pub leader: Option<String>,
    /// The newest fencing token seen.
    pub token: u64,
    /// Set while this node leads: it may act until then.
    pub leading_until: Option<Instant>,
    pub decision: Option<FleetDecision>,
    /// Other nodes' (and this one's) signals, as last read.
    pub nodes: Vec<NodeSignals>,
    pub last_decided: Option<Instant>,
    /// Decisions refused: stale tokens read, or fenced writes refused.
    pub refused: u64,
    /// Times this node became leader.
    pub terms: u64,
    /// The last share run while connected (the floor when node-local).
    pub last_share: u32,
    /// The newest manual request applied (its `at_ms`).
    pub manual_at_ms: u64,
    /// Rounds done (successful or not).
    pub rounds: u64,
}

impl Coordination {
    pub fn is_leader(&self, now: Instant) -> bool {
        self.leading_until.is_some_and(|u| now < u)
    }

    /// This node's share of the stored decision: (share, index, nodes).
    pub fn share(&self, me: &str) -> Option<(u32, usize, usize)> {
        let d = self.decision.as_ref()?;
        let n = d.nodes.len();
        let i = d.nodes.iter().position(|x| x == me)?;
        Some((share_of(d.desired, i, n), i, n))
    }
}

/// Node `i` of `n` runs `desired / n`, plus one when `i < desired % n`.
pub fn share_of(desired: u32, i: usize, n: usize) -> u32 {
    if n == 0 {
        return 0;
    }
    let n32 = n as u32;
    desired / n32 + u32::from((i as u32) < desired % n32)
}

/// The fleet's signals: sums, per-instance averages over every node's ready instances, the
/// p95 of the merged histograms, CPU and memory weighted by ready instances.
pub fn fleet_signals(nodes: &[NodeSignals]) -> Signals {
    let once = nodes.iter().any(|n| n.members_shared);
    let count = |f: fn(&NodeSignals) -> u32| -> u32 {
        let it = nodes.iter().map(f);
        if once {
            it.max().unwrap_or(0)
        } else {
            it.sum()
        }
    };
    let ready = count(|n| n.ready);
    // Shared members: every node sees the same instances, some later than others. The
    // fleet has as many as the most up-to-date view (the largest ready + starting), of
    // which `ready` are ready; taking the largest of each apart would count an instance
    // twice while one node still sees it starting and another already ready.
    let starting = if once {
        let seen = nodes
            .iter()
            .map(|n| n.ready + n.starting)
            .max()
            .unwrap_or(0);
        seen.saturating_sub(ready)
    } else {
        nodes.iter().map(|n| n.starting).sum()
    };
    let per = f64::from(ready.max(1));
    let mut acc = vec![0u64; BUCKETS];
    for n in nodes {
        for &(b, c) in &n.latency {
            if let Some(slot) = acc.get_mut(b as usize) {
                *slot += c;
            }
        }
    }
    let total: u64 = acc.iter().sum();
    let p95 = (total > 0).then(|| {
        let rank = ((total as f64) * 0.95).ceil().max(1.0) as u64;
        let mut seen = 0;
        let idx = acc
            .iter()
            .position(|c| {
                seen += c;
                seen >= rank
            })
            .unwrap_or(BUCKETS - 1);
        bucket_upper_us(idx) as f64 / 1000.0
    });
    let weighted = |f: fn(&NodeSignals) -> Option<f64>| {
        let (sum, w) = nodes
            .iter()
            .filter_map(|n| f(n).map(|v| (v * f64::from(n.ready), f64::from(n.ready))))
            .fold((0.0, 0.0), |(s, w), (v, r)| (s + v, w + r));
        (w > 0.0).then(|| sum / w)
    };
    Signals {
        ready,
        starting,
        inflight_per_instance: nodes.iter().map(|n| n.inflight).sum::<u64>() as f64 / per,
        rps_per_instance: nodes.iter().map(|n| n.rps).sum::<f64>() / per,
        p95_latency_ms: p95,
        cpu_percent: weighted(|n| n.cpu_percent),
        memory_mb: weighted(|n| n.memory_mb),
        cold_waiters: nodes.iter().map(|n| n.cold_waiters).sum(),
        ..Signals::default()
    }
}

/// A manual size for a shared pool, published for the leader to apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManualRequest {
    pub instances: u32,
    pub hold_ms: u64,
    pub at_ms: u64,
}

fn signals_group(pool: &str) -> String {
    format!("autoscale:{pool}:signals")
}

fn manual_group(pool: &str) -> String {
    format!("autoscale:{pool}:manual")
}

fn lease_name(pool: &str) -> String {
    format!("autoscale:{pool}")
}

/// Publish a manual size for the fleet (the leader applies it on its next round).
pub async fn publish_manual(
    backend: Arc<dyn SharedState>,
    pool: String,
    instances: u32,
    hold: Duration,
) {
    let req = ManualRequest {
        instances,
        hold_ms: hold.as_millis() as u64,
        at_ms: now_ms(),
    };
    let Ok(text) = serde_json::to_string(&req) else {
        return;
    };
    let ttl = hold.max(Duration::from_secs(1));
    if let Err(e) = bounded(backend.put_member(&manual_group(&pool), "request", text, ttl)).await {
        tracing::warn!(pool = %pool, error = %e, "cannot publish the manual size to the fleet");
    }
}

/// The coordination loop of one pool: runs while the scaler runs; idle unless `shared`.
pub async fn run(scaler: Arc<PoolScaler>, backend: Arc<dyn SharedState>, me: String) {
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (stopped, shared) = {
            let st = scaler.lock();
            (st.stopped, st.cfg.shared)
        };
        if stopped {
            return;
        }
        if !shared {
            continue;
        }
        let changed = round(&scaler, backend.as_ref(), &me).await;
        let first = {
            let mut st = scaler.lock();
            st.coord.rounds += 1;
            st.coord.rounds == 1
        };
        if changed || first {
            scaler.wake.notify_one();
        }
    }
}

/// One round; true when this node's share changed (the scaler should act now).
async fn round(scaler: &PoolScaler, backend: &dyn SharedState, me: &str) -> bool {
    let pool = scaler.pool.clone();
    let before = scaler.lock().coord.share(me);
    let mine = {
        let st = scaler.lock();
        NodeSignals {
            node: me.to_string(),
            ..st.node_signals.clone()
        }
    };
    let ok = async {
        let text = serde_json::to_string(&mine).unwrap_or_default();
        bounded(backend.put_member(&signals_group(&pool), me, text, SIGNALS_TTL)).await?;
        let sent = Instant::now();
        let lease = bounded(backend.lease(&lease_name(&pool), me, LEASE_TTL)).await?;
        let nodes = bounded(backend.members(&signals_group(&pool))).await?;
        let manual = if lease.holder == me {
            bounded(backend.members(&manual_group(&pool))).await?
        } else {
            Vec::new()
        };
        let stored = bounded(backend.get_fenced(&lease_name(&pool))).await?;
        Ok::<_, crate::state::StateError>((sent, lease, nodes, manual, stored))
    }
    .await;
    let (sent, lease, nodes, manual, stored) = match ok {
        Ok(v) => v,
        Err(e) => {
            let mut st = scaler.lock();
            if st.coord.connected {
                tracing::warn!(pool = %pool, error = %e, "shared autoscaling: the shared state does not answer; node-local");
            }
            st.coord.connected = false;
            st.coord.leading_until = None;
            return before.is_some();
        }
    };
    let decide = {
        let mut st = scaler.lock();
        let c = &mut st.coord;
        c.connected = true;
        let was_leader = c.is_leader(Instant::now());
        c.leader = Some(lease.holder.clone());
        c.token = c.token.max(lease.token);
        if lease.holder == me && lease.token >= c.token {
            c.leading_until = Some(sent + LEASE_TTL - MARGIN);
            if !was_leader {
                c.terms += 1;
                tracing::info!(pool = %pool, token = lease.token, "shared autoscaling: this node leads");
            }
        } else {
            if was_leader {
                tracing::info!(pool = %pool, leader = %lease.holder, "shared autoscaling: no longer leading");
            }
            c.leading_until = None;
        }
        let mut list: Vec<NodeSignals> = nodes
            .iter()
            .filter_map(|(_, v)| serde_json::from_str(v).ok())
            .collect();
        list.sort_by(|a, b| a.node.cmp(&b.node));
        c.nodes = list;
        if let Some(d) = stored.and_then(|s| serde_json::from_str::<FleetDecision>(&s).ok()) {
            if d.token >= c.token {
                c.token = d.token;
                c.decision = Some(d);
            } else if c.decision.as_ref() != Some(&d) {
                c.refused += 1;
                tracing::warn!(pool = %pool, stale = d.token, newest = c.token, "refusing a decision with a stale fencing token");
            }
        }
        let interval = st.cfg.interval;
        let leading = st.coord.is_leader(Instant::now());
        if leading {
            apply_manual(&mut st, &manual);
        }
        let due = st
            .coord
            .last_decided
            .is_none_or(|t| t.elapsed() + ROUND / 2 >= interval);
        leading && due
    };
    if decide {
        lead(scaler, backend, me, &pool).await;
    }
    let after = scaler.lock().coord.share(me);
    after != before
}

/// The leader applies the newest manual request (once).
fn apply_manual(st: &mut super::controller::ScalerState, manual: &[(String, String)]) {
    let newest = manual
        .iter()
        .filter_map(|(_, v)| serde_json::from_str::<ManualRequest>(v).ok())
        .max_by_key(|r| r.at_ms);
    let Some(r) = newest else { return };
    if r.at_ms <= st.coord.manual_at_ms {
        return;
    }
    st.coord.manual_at_ms = r.at_ms;
    let hold = Duration::from_millis(r.hold_ms.saturating_sub(now_ms().saturating_sub(r.at_ms)));
    let l = super::schedule::limits_now(&st.cfg);
    let n = r.instances.clamp(l.min, l.max.max(l.min));
    st.policy.set_manual(n, Instant::now(), hold);
    st.coord.last_decided = None;
}

/// The leader's decision: aggregate, decide, store fenced.
async fn lead(scaler: &PoolScaler, backend: &dyn SharedState, me: &str, pool: &str) {
    let (decision, token) = {
        let mut st = scaler.lock();
        let now = Instant::now();
        let mut fleet = fleet_signals(&st.coord.nodes);
        // External sources say the fleet's demand already: the leader's readings.
        st.external.apply(&mut fleet);
        let limits = super::schedule::limits_now(&st.cfg);
        let d = super::controller::predicted(&mut st, &limits, &fleet, now);
        let mut nodes: Vec<String> = st.coord.nodes.iter().map(|n| n.node.clone()).collect();
        if !nodes.iter().any(|n| n == me) {
            nodes.push(me.to_string());
            nodes.sort();
        }
        st.coord.last_decided = Some(now);
        st.fleet_signals = Some(fleet);
        let token = st.coord.token;
        let decision = FleetDecision {
            desired: d.desired,
            token,
            leader: me.to_string(),
            reason: d.reason,
            at_ms: now_ms(),
            nodes,
        };
        (decision, token)
    };
    // The action carries the token; it is refused once a newer leader exists, and never
    // sent past this node's own lease.
    if !scaler.lock().coord.is_leader(Instant::now()) {
        return;
    }
    let Ok(text) = serde_json::to_string(&decision) else {
        return;
    };
    match bounded(backend.put_fenced(&lease_name(pool), token, text, DECISION_TTL)).await {
        Ok(true) => {
            let mut st = scaler.lock();
            if st.coord.decision.as_ref().map(|d| d.desired) != Some(decision.desired) {
                tracing::info!(pool, desired = decision.desired, token, reason = %decision.reason, "shared autoscaling: fleet decision");
            }
            st.coord.decision = Some(decision);
        }
        Ok(false) => {
            let mut st = scaler.lock();
            st.coord.refused += 1;
            st.coord.leading_until = None;
            tracing::warn!(pool, token, "fenced write refused: a newer leader exists");
        }
        Err(e) => {
            tracing::warn!(pool, error = %e, "cannot store the fleet decision");
        }
    }
}

/// The `fleet` part of a shared pool's `/scaling/status`.
pub fn status_json(st: &super::controller::ScalerState, me: &str) -> Value {
    let c = &st.coord;
    let now = Instant::now();
    let share = c.share(me);
    json!({
        "node_id": me,
        "mode": if c.connected { "shared" } else { "node-local" },
        "connected": c.connected,
        "leader": c.leader,
        "is_leader": c.is_leader(now),
        "fencing_token": c.token,
        "terms": c.terms,
        "refused": c.refused,
        "desired": c.decision.as_ref().map(|d| d.desired),
        "reason": c.decision.as_ref().map(|d| d.reason.clone()),
        "decided_by": c.decision.as_ref().map(|d| d.leader.clone()),
        "decision_token": c.decision.as_ref().map(|d| d.token),
        "share": share.map(|s| s.0),
        "nodes": c.nodes.iter().map(|n| json!({
            "node": n.node, "ready": n.ready, "starting": n.starting,
            "inflight": n.inflight, "rps": (n.rps * 100.0).round() / 100.0,
        })).collect::<Vec<_>>(),
        "signals": st.fleet_signals.as_ref().map(signals_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_spread_the_rest() {
        for desired in 0..20 {
            for n in 1..6 {
                let shares: Vec<u32> = (0..n).map(|i| share_of(desired, i, n)).collect();
                assert_eq!(shares.iter().sum::<u32>(), desired);
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{shares:?}");
            }
        }
        assert_eq!(share_of(3, 0, 0), 0);
    }

    #[test]
    fn fleet_signals_sum_and_average_over_ready_instances() {
        let a = NodeSignals {
            node: "a".into(),
            ready: 1,
            starting: 1,
            inflight: 30,
            rps: 100.0,
            latency: vec![(10, 95), (200, 5)],
            cpu_percent: Some(10.0),
            ..NodeSignals::default()
        };
        let b = NodeSignals {
            node: "b".into(),
            ready: 3,
            inflight: 50,
            rps: 300.0,
            cpu_percent: Some(50.0),
            cold_waiters: 2,
            ..NodeSignals::default()
        };
        let s = fleet_signals(&[a, b]);
        assert_eq!((s.ready, s.starting, s.cold_waiters), (4, 1, 2));
        assert!((s.inflight_per_instance - 20.0).abs() < 1e-9);
        assert!((s.rps_per_instance - 100.0).abs() < 1e-9);
        assert!(s.cpu_percent.is_some_and(|c| (c - 40.0).abs() < 1e-9));
        // 95 of 100 samples are in bucket 10: the p95 is its upper edge.
        assert_eq!(s.p95_latency_ms, Some(bucket_upper_us(10) as f64 / 1000.0));
        assert_eq!(fleet_signals(&[]).p95_latency_ms, None);
    }

    #[test]
    fn shared_members_are_counted_once_however_late_a_node_sees_them() {
        let node = |name: &str, ready, starting| NodeSignals {
            node: name.into(),
            ready,
            starting,
            members_shared: true,
            ..NodeSignals::default()
        };
        // The leader sees 4 ready; a node behind it still sees 2 of them starting.
        let s = fleet_signals(&[node("a", 4, 0), node("b", 2, 2)]);
        assert_eq!((s.ready, s.starting), (4, 0));
        // A scale-up under way: the leader sees 2 more starting, the other not yet.
        let s = fleet_signals(&[node("a", 4, 2), node("b", 4, 0)]);
        assert_eq!((s.ready, s.starting), (4, 2));
    }

    #[test]
    fn the_share_comes_from_the_decision() {
        let mut c = Coordination::default();
        assert_eq!(c.share("b"), None);
        c.decision = Some(FleetDecision {
            desired: 5,
            token: 1,
            leader: "a".into(),
            reason: String::new(),
            at_ms: 0,
            nodes: vec!["a".into(), "b".into()],
        });
        assert_eq!(c.share("a"), Some((3, 0, 2)));
        assert_eq!(c.share("b"), Some((2, 1, 2)));
        assert_eq!(c.share("c"), None);
    }
}
