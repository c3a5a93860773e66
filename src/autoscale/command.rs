//! The `command` provider: backends that live elsewhere (Kubernetes, Docker, Nomad, ...).
//! autolb sets the size by running the user's `scale` argv (`{pool}`, `{count}` and
//! `{token}` substituted) and learns the members from the `list` argv (which prints
//! `[{"address":"host:port"}]`) every interval, or from DNS A or SRV records
//! (`discovery.rs`) when the answer's TTL runs out (at least every discovery interval).
//! New members start unusable: their health check must pass first. With `shared: true`
//! only the leader runs `scale`, with the fleet-wide size and its fencing token; every node
//! reads the members.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::controller::{now_ms, signals_json, PoolScaler, ScalerState, ScalingEvent, MAX_EVENTS};
use super::discovery::{Dns, Member};
use super::policy::Signals;
use crate::config::Autoscale;
use crate::runtime::{BackendStats, ManagedBackend, Runtime};
use crate::upstream::ConnPool;

/// How long `scale` may run.
const SCALE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `list` or a DNS lookup may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0} timed out after {1:?}")]
    Timeout(String, Duration),
    #[error("{0} failed ({1}): {2}")]
    Failed(String, String, String),
    #[error("list output is not [{{\"address\":\"host:port\"}}, ...]: {0}")]
    Json(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
}

#[derive(Deserialize)]
struct Listed {
    address: String,
}

/// `[{"address":"host:port"}, ...]` -> addresses.
pub fn parse_list(text: &str) -> Result<Vec<String>, CommandError> {
    let items: Vec<Listed> =
        serde_json::from_str(text.trim()).map_err(|e| CommandError::Json(e.to_string()))?;
    Ok(items.into_iter().map(|l| l.address).collect())
}

/// `{pool}`, `{count}` and `{token}` substituted in every argument.
pub fn substitute(argv: &[String], pool: &str, count: u32, token: u64) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{pool}", pool)
                .replace("{count}", &count.to_string())
                .replace("{token}", &token.to_string())
        })
        .collect()
}

/// Run `argv` (in the autoscale `cwd`, with its `env`) and answer its stdout.
pub async fn run(
    cfg: &Autoscale,
    argv: &[String],
    limit: Duration,
) -> Result<String, CommandError> {
    let name = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&name);
    cmd.args(&argv[1.min(argv.len())..])
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &cfg.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd
        .spawn()
        .map_err(|e| CommandError::Spawn(name.clone(), e))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| CommandError::Timeout(name.clone(), limit))?
        .map_err(|e| CommandError::Spawn(name.clone(), e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(CommandError::Failed(name, out.status.to_string(), err));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The members from `list` (weight 1; each address resolved by the system) or from DNS
/// discovery, and, for DNS, when to look again (the answer's TTL).
async fn fetch(
    cfg: &Autoscale,
    pool: &str,
    dns: &mut Option<Dns>,
) -> Result<(Vec<Member>, Option<Duration>), CommandError> {
    let Some(keys) = cfg.provider.command() else {
        return Ok((Vec::new(), None));
    };
    if let Some(d) = &keys.discovery {
        if dns.as_ref().is_none_or(|r| r.server() != d.resolver) {
            *dns = Some(Dns::new(d.resolver)?);
        }
        let Some(resolver) = dns.as_ref() else {
            return Ok((Vec::new(), None));
        };
        let answer = resolver.lookup(d).await?;
        return Ok((answer.members, Some(answer.next)));
    }
    let names = parse_list(&run(cfg, &substitute(&keys.list, pool, 0, 0), LIST_TIMEOUT).await?)?;
    let mut members = Vec::new();
    for n in names {
        let found = tokio::time::timeout(LIST_TIMEOUT, tokio::net::lookup_host(n.clone()))
            .await
            .map_err(|_| CommandError::Resolve(n.clone(), "timed out".into()))?
            .map_err(|e| CommandError::Resolve(n.clone(), e.to_string()))?;
        members.extend(found.take(1).map(|addr| Member { addr, weight: 1 }));
    }
    members.sort();
    members.dedup_by_key(|m| m.addr);
    Ok((members, None))
}

/// Follow the membership while the pool is autoscaled with provider `command`.
pub async fn members_loop(scaler: Arc<PoolScaler>, runtime: Arc<Runtime>) {
    let mut dns = None;
    loop {
        let (cfg, stopped) = {
            let st = scaler.lock();
            (st.cfg.clone(), st.stopped)
        };
        let Some(keys) = cfg.provider.command().filter(|_| !stopped) else {
            return;
        };
        let mut every = keys.discovery.as_ref().map_or(cfg.interval, |d| d.interval);
        match fetch(&cfg, &scaler.pool, &mut dns).await {
            Ok((members, next)) => {
                if update(&scaler, &runtime, &members) {
                    scaler.wake.notify_one();
                }
                if let Some(next) = next {
                    every = next;
                }
            }
            Err(e) => {
                tracing::warn!(pool = %scaler.pool, error = %e, "cannot read the members; keeping the last ones")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = scaler.refresh.notified() => {}
        }
    }
}

/// New member set: known members keep their stats, new ones start down (health check
/// first). True when it changed (published to the runtime).
fn update(scaler: &PoolScaler, runtime: &Runtime, found: &[Member]) -> bool {
    let mut st = scaler.lock();
    let current: Vec<Member> = st
        .members
        .iter()
        .map(|m| Member {
            addr: m.addr,
            weight: m.weight,
        })
        .collect();
    if current == found {
        return false;
    }
    let members: Vec<ManagedBackend> = found
        .iter()
        .map(|f| match st.members.iter().find(|m| m.addr == f.addr) {
            Some(known) => ManagedBackend {
                weight: f.weight,
                ..known.clone()
            },
            None => {
                let stats = BackendStats::default();
                stats.up.store(false, Ordering::Relaxed);
                ManagedBackend {
                    address: f.addr.to_string(),
                    addr: f.addr,
                    weight: f.weight,
                    stats: Arc::new(stats),
                    conns: Arc::new(ConnPool::new(f.addr, runtime.workers)),
                }
            }
        })
        .collect();
    tracing::info!(pool = %scaler.pool, members = members.len(), "members changed");
    st.members = members;
    runtime.set_managed(&scaler.pool, st.members.clone());
    true
}

/// Signals over the members (ready: healthy; starting: the rest, and what `scale` asked
/// for that has not shown up yet).
pub fn signals(st: &mut ScalerState, runtime: &Runtime, now: Instant) -> Signals {
    let total: u64 = st.members.iter().map(|m| m.stats.total_responses()).sum();
    let rps = st.rate(now, total);
    let ready: Vec<&ManagedBackend> = st.members.iter().filter(|m| m.stats.healthy()).collect();
    let n = ready.len().max(1) as f64;
    let inflight: u64 = ready
        .iter()
        .map(|m| {
            m.stats.active.load(Ordering::Relaxed) + m.stats.websockets.load(Ordering::Relaxed)
        })
        .sum();
    let snapshot = runtime.snapshot();
    let pool = snapshot.pool(&st.pool_name);
    let window = st.cfg.interval.as_secs().max(1);
    let p95 = pool
        .map(|p| p.stats.window.summary_recent(now, window))
        .and_then(|s| (s.requests > 0).then_some(s.p95.as_secs_f64() * 1000.0));
    let cold_waiters = pool.map_or(0, |p| p.stats.cold_waiters.load(Ordering::Relaxed));
    // Requests waiting in the pool's `limits:` queue are demand the instances could not take.
    let inflight = inflight + pool.map_or(0, |p| p.queued());
    let members = st.members.len() as u32;
    let pending = st.requested.map_or(0, |r| r.saturating_sub(members));
    let mut signals = Signals {
        ready: ready.len() as u32,
        starting: members - ready.len() as u32 + pending,
        inflight_per_instance: inflight as f64 / n,
        rps_per_instance: rps / n,
        p95_latency_ms: p95,
        cold_waiters,
        ..Signals::default()
    };
    st.external.apply(&mut signals);
    st.node_signals = super::shared::NodeSignals {
        node: st.node_id.clone(),
        ready: signals.ready,
        starting: signals.starting,
        inflight,
        rps,
        latency: super::controller::latency_buckets(pool, now, window),
        members_shared: true,
        cold_waiters,
        ..Default::default()
    };
    signals
}

/// Run `scale` when the desired size differs from what was last asked; with `shared`, only
/// while this node leads, carrying its fencing token.
pub fn act(
    scaler: &Arc<PoolScaler>,
    st: &mut ScalerState,
    alerts: &crate::alerts::AlertQueue,
    desired: u32,
    reason: &str,
) {
    if st.requested == Some(desired) || st.scaling {
        return;
    }
    let mut token = 0;
    if st.cfg.shared && !st.node_id.is_empty() {
        let now = Instant::now();
        if !st.coord.is_leader(now) {
            return;
        }
        token = st.coord.token;
    }
    let from = st.requested.unwrap_or(st.members.len() as u32);
    st.scaling = true;
    let scale = st.cfg.provider.command().map_or(&[][..], |c| &c.scale[..]);
    let argv = substitute(scale, &scaler.pool, desired, token);
    let cfg = st.cfg.clone();
    let event = ScalingEvent {
        at_ms: now_ms(),
        from,
        to: desired,
        reason: reason.to_string(),
        signals: signals_json(&st.last_signals),
        victims: Vec::new(),
    };
    if st.events.len() == MAX_EVENTS {
        st.events.pop_front();
    }
    st.events.push_back(event);
    let counter = if desired > from {
        &scaler.scale_ups
    } else {
        &scaler.scale_downs
    };
    counter.fetch_add(1, Ordering::Relaxed);
    crate::alerts::scaling(alerts, &scaler.pool, from, desired, reason);
    tracing::info!(pool = %scaler.pool, from, to = desired, token, reason, "scaling: running scale");
    let scaler = scaler.clone();
    tokio::spawn(async move {
        let r = run(&cfg, &argv, SCALE_TIMEOUT).await;
        let mut st = scaler.lock();
        st.scaling = false;
        match r {
            Ok(_) => st.requested = Some(desired),
            Err(e) => {
                tracing::error!(pool = %scaler.pool, error = %e, "scale command failed; retrying at the next decision")
            }
        }
        drop(st);
        scaler.refresh.notify_one();
    });
}

/// The `command` provider behind the provider seam.
pub struct Command;

impl super::provider::Provider for Command {
    fn spawn_tasks(&self, scaler: &Arc<PoolScaler>, runtime: &Arc<Runtime>) {
        tokio::spawn(members_loop(scaler.clone(), runtime.clone()));
    }

    fn tick(
        &self,
        scaler: &Arc<PoolScaler>,
        st: &mut ScalerState,
        runtime: &Arc<Runtime>,
        now: Instant,
    ) {
        let signals = signals(st, runtime, now);
        let decision = scaler.decide(st, &signals, now);
        st.last_signals = signals;
        st.desired = decision.desired;
        let hold = st.cfg.shared && !st.node_id.is_empty() && !st.coord.connected;
        if !hold {
            act(
                scaler,
                st,
                &runtime.alerts,
                decision.desired,
                &decision.reason,
            );
        }
        st.last = Some(decision);
    }

    fn members_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_and_substitution() {
        let a = parse_list(r#" [{"address":"10.0.0.1:80"},{"address":"web-2:8080","x":1}] "#);
        assert_eq!(
            a.ok(),
            Some(vec!["10.0.0.1:80".into(), "web-2:8080".into()])
        );
        assert!(parse_list("10.0.0.1:80").is_err());
        assert!(parse_list(r#"[{"addr":"x"}]"#).is_err());
        let argv = ["./scale.sh", "{pool}", "{count}", "--token={token}"].map(String::from);
        assert_eq!(
            substitute(&argv, "web", 4, 9),
            ["./scale.sh", "web", "4", "--token=9"]
                .map(String::from)
                .to_vec()
        );
    }
}
