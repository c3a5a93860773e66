//! The JSON documents of `/health`, `/health/performance` and `/loadbalancer/status`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::config::{Algorithm, HashKey};
use crate::metrics::CODE_LABELS;
use crate::runtime::stats::{summarize, summarize_recent, Peak};
use crate::runtime::{Backend, BackendMode, Pool, Runtime, WindowSummary};
use crate::server::ListenerStats;

fn hash_key_name(k: &HashKey) -> String {
    match k {
        HashKey::SourceIp => "source_ip".into(),
        HashKey::Header(h) => format!("header:{h}"),
        HashKey::Cookie(c) => format!("cookie:{c}"),
        HashKey::Uri => "uri".into(),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Snapshot changes that are not config changes, counted apart from the generation.
fn updates(snap: &crate::runtime::Snapshot) -> Value {
    json!({
        "autoscaler": snap.autoscaler_updates,
        "backend_states": snap.backend_state_changes,
    })
}

/// `GET /health`: liveness and a summary.
pub fn health(rt: &Runtime) -> Value {
    let snap = rt.snapshot();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| json!({ "name": p.name, "ready": p.ready_backends(), "total": p.backends.len() }))
        .collect();
    let degraded = snap.pools.iter().any(|p| p.ready_backends() == 0);
    json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": rt.started.elapsed().as_secs(),
        "workers": rt.workers,
        "config": {
            "source": snap.config.source.display().to_string(),
            "hash": snap.config.hash,
            "generation": snap.generation,
        },
        "updates": updates(&snap),
        "pools": pools,
    })
}

/// Milliseconds, or null when the window saw no request ("no data", not zero).
fn latency(s: &WindowSummary) -> Value {
    if s.requests == 0 {
        return json!({ "p50": null, "p95": null, "p99": null });
    }
    json!({ "p50": ms(s.p50), "p95": ms(s.p95), "p99": ms(s.p99) })
}

fn rate(r: Option<f64>) -> Value {
    r.map_or(Value::Null, |r| json!((r * 100.0).round() / 100.0))
}

/// The performance of a pool or of all of them.
struct Perf {
    minute: WindowSummary,
    ten: WindowSummary,
    rps_1s: Option<f64>,
    rps_10s: Option<f64>,
    peak: Peak,
    active_requests: u64,
}

impl Perf {
    fn to_json(&self) -> Value {
        let s = &self.minute;
        let error_rate = (s.requests > 0).then(|| {
            let r = s.errors as f64 / s.requests as f64;
            (r * 10_000.0).round() / 10_000.0
        });
        let rps = rate(Some(s.rps));
        json!({
            "requests": s.requests,
            "errors": s.errors,
            "rps": rps,
            "rps_1s": rate(self.rps_1s),
            "rps_10s": rate(self.rps_10s),
            "rps_60s": rps,
            "peak_rps": (self.peak.requests > 0).then_some(self.peak.requests),
            "peak_at_ms": (self.peak.requests > 0).then_some(self.peak.at_ms),
            "error_rate": error_rate,
            "latency_ms": latency(s),
            "latency_10s_ms": latency(&self.ten),
            "active_requests": self.active_requests,
        })
    }
}

/// Sum of the pools' rates (`None` when no pool has a complete second yet).
fn sum_rates(rates: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    rates.fold(None, |acc, r| match (acc, r) {
        (None, r) => r,
        (Some(a), Some(r)) => Some(a + r),
        (a, None) => a,
    })
}

/// `GET /health/performance`: overall and per pool, the last second, 10 seconds and
/// minute, and the peak second since start.
pub fn performance(rt: &Runtime, listeners: &BTreeMap<String, Arc<ListenerStats>>) -> Value {
    let snap = rt.snapshot();
    let now = Instant::now();
    let windows = || snap.pools.iter().map(|p| &p.stats.window);
    let (overall_peak, pool_peaks) = rt.peaks.update(
        snap.pools
            .iter()
            .map(|p| (p.name.as_str(), &p.stats.window)),
        now,
    );
    let connections: i64 = listeners
        .values()
        .map(|l| l.connections.load(Ordering::Relaxed))
        .sum();
    let mut pools = Map::new();
    for (p, peak) in snap.pools.iter().zip(pool_peaks) {
        let w = &p.stats.window;
        let perf = Perf {
            minute: w.summary(now),
            ten: w.summary_recent(now, 10),
            rps_1s: w.rate(now, 1),
            rps_10s: w.rate(now, 10),
            peak,
            active_requests: p.active(),
        };
        pools.insert(p.name.clone(), perf.to_json());
    }
    let overall = Perf {
        minute: summarize(windows(), now),
        ten: summarize_recent(windows(), now, 10),
        rps_1s: sum_rates(windows().map(|w| w.rate(now, 1))),
        rps_10s: sum_rates(windows().map(|w| w.rate(now, 10))),
        peak: overall_peak,
        active_requests: snap.pools.iter().map(|p| p.active()).sum(),
    };
    let mut overall = overall.to_json();
    overall["active_connections"] = json!(connections);
    json!({ "window_seconds": 60, "overall": overall, "pools": pools })
}

/// A backend's health as the status shows it: `disabled` (configured), `maint` (the
/// operator's: checks paused), `down` (active checks), `ejected` (outlier detection), `up`.
pub fn health_name(b: &Backend) -> &'static str {
    if b.disabled {
        "disabled"
    } else if b.mode == BackendMode::Maint {
        "maint"
    } else if !b.stats.up.load(Ordering::Relaxed) {
        "down"
    } else if b.stats.ejected.load(Ordering::Relaxed) {
        "ejected"
    } else {
        "up"
    }
}

fn pool_status(p: &Pool) -> Value {
    let backends: Vec<Value> = p
        .backends
        .iter()
        .map(|b| {
            let s = &b.stats;
            let mut responses = Map::new();
            for (i, code) in CODE_LABELS.iter().enumerate() {
                responses.insert((*code).into(), json!(s.responses[i].load(Ordering::Relaxed)));
            }
            let health = health_name(b);
            let check = s.last_check.lock().ok().and_then(|c| c.clone()).map(|c| {
                json!({
                    "ok": c.ok,
                    "detail": c.detail,
                    "at_ms": c.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                    "took_ms": ms(c.took),
                    "consecutive_successes": s.check_successes.load(Ordering::Relaxed),
                    "consecutive_failures": s.check_failures.load(Ordering::Relaxed),
                })
            });
            json!({
                "address": b.address,
                "resolved": b.addr.to_string(),
                "weight": b.weight,
                "config_weight": b.config_weight,
                "state": b.mode.as_str(),
                "health": health,
                "usable": b.usable(),
                "active_requests": b.active(),
                "requests_total": s.total_responses(),
                "errors": s.failures.load(Ordering::Relaxed) + s.responses[5].load(Ordering::Relaxed),
                "failures": s.failures.load(Ordering::Relaxed),
                "responses": responses,
                "latency_ms": {
                    "mean": s.mean_latency().map(ms),
                    "ewma": (s.ewma_ns() / 1e3).round() / 1e3,
                },
                "idle_connections": b.conns.idle_count(),
                "websockets": s.websockets.load(Ordering::Relaxed),
                "draining": s.draining.load(Ordering::Relaxed),
                "check": check,
                "ejected": s.ejected.load(Ordering::Relaxed),
                "ejections": s.ejections.load(Ordering::Relaxed),
                "slow_start_factor": b.ramp_factor(),
            })
        })
        .collect();
    let mut v = json!({
        "name": p.name,
        "algorithm": p.algorithm.name(),
        "retries": p.retries,
        "active_requests": p.active(),
        "ready": p.ready_backends(),
        "total": p.backends.len(),
        "local_errors": p.stats.local_errors.load(Ordering::Relaxed),
        "panic": p.in_panic(),
        "affinity": p.affinity.as_ref().map(|a| a.mode()),
        "websockets": p.backends.iter().map(|b| b.stats.websockets.load(Ordering::Relaxed)).sum::<u64>(),
        "backends": backends,
    });
    if p.algorithm == Algorithm::ConsistentHash {
        v["hash_key"] = json!(hash_key_name(&p.hash_key));
    }
    v["queue"] = p.queue.as_ref().map_or(Value::Null, |q| q.status());
    v["bytes"] = json!({
        "in": p.stats.request_bytes.load(Ordering::Relaxed),
        "out": p.stats.response_bytes.load(Ordering::Relaxed),
    });
    v
}

/// `GET /loadbalancer/status`: every pool and backend.
pub fn loadbalancer(rt: &Runtime, listeners: &BTreeMap<String, Arc<ListenerStats>>) -> Value {
    let snap = rt.snapshot();
    let caches = crate::metrics::cache::by_pool(&snap);
    let mut pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let mut v = pool_status(p);
            v["cache"] = caches
                .get(p.name.as_str())
                .map_or(Value::Null, |c| c.json());
            v
        })
        .collect();
    let mut listeners: Vec<Value> = snap
        .config
        .listeners
        .iter()
        .map(|l| {
            let st = listeners.get(&l.name);
            json!({
                "name": l.name,
                "listen": l.listen.to_string(),
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "pool": l.pool,
                "connections": st.map_or(0, |s| s.connections.load(Ordering::Relaxed)),
                "accepted": st.map_or(0, |s| s.accepted.load(Ordering::Relaxed)),
            })
        })
        .collect();
    crate::l4::annotate_status(&snap, &mut pools, &mut listeners);
    let events: Vec<Value> = rt
        .events
        .recent()
        .into_iter()
        .rev()
        .map(|e| {
            json!({
                "at_ms": e.at_ms,
                "pool": e.pool,
                "backend": e.backend,
                "event": e.kind,
                "detail": e.detail,
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "updates": updates(&snap),
        "listeners": listeners,
        "pools": pools,
        "events": events,
    })
}
