//! The JSON documents of `/health`, `/health/performance` and `/loadbalancer/status`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::config::{Algorithm, HashKey};
use crate::metrics::CODE_LABELS;
use crate::runtime::stats::summarize;
use crate::runtime::{Pool, Runtime, WindowSummary};
use crate::server::ListenerStats;

pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin => "round_robin",
        Algorithm::WeightedRoundRobin => "weighted_round_robin",
        Algorithm::LeastConn => "least_conn",
        Algorithm::P2c => "p2c",
        Algorithm::PeakEwma => "peak_ewma",
        Algorithm::ConsistentHash => "consistent_hash",
        Algorithm::Random => "random",
    }
}

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
        "uptime_seconds": rt.started.elapsed().as_secs(),
        "workers": rt.workers,
        "config": {
            "source": snap.config.source.display().to_string(),
            "generation": snap.generation,
        },
        "pools": pools,
    })
}

fn perf(s: &WindowSummary, active_requests: u64) -> Value {
    let error_rate = if s.requests == 0 {
        0.0
    } else {
        s.errors as f64 / s.requests as f64
    };
    json!({
        "requests": s.requests,
        "errors": s.errors,
        "rps": (s.rps * 100.0).round() / 100.0,
        "error_rate": (error_rate * 10_000.0).round() / 10_000.0,
        "latency_ms": { "p50": ms(s.p50), "p95": ms(s.p95), "p99": ms(s.p99) },
        "active_requests": active_requests,
    })
}

/// `GET /health/performance`: the last minute, overall and per pool.
pub fn performance(rt: &Runtime, listeners: &BTreeMap<String, Arc<ListenerStats>>) -> Value {
    let snap = rt.snapshot();
    let now = Instant::now();
    let overall = summarize(snap.pools.iter().map(|p| &p.stats.window), now);
    let active: u64 = snap.pools.iter().map(|p| p.active()).sum();
    let connections: i64 = listeners
        .values()
        .map(|l| l.connections.load(Ordering::Relaxed))
        .sum();
    let mut pools = Map::new();
    for p in &snap.pools {
        pools.insert(
            p.name.clone(),
            perf(&p.stats.window.summary(now), p.active()),
        );
    }
    let mut overall = perf(&overall, active);
    overall["active_connections"] = json!(connections);
    json!({ "window_seconds": 60, "overall": overall, "pools": pools })
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
            let health = if b.disabled {
                "disabled"
            } else if !s.up.load(Ordering::Relaxed) {
                "down"
            } else if s.ejected.load(Ordering::Relaxed) {
                "ejected"
            } else {
                "up"
            };
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
        "algorithm": algorithm_name(p.algorithm),
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
    v
}

/// `GET /loadbalancer/status`: every pool and backend.
pub fn loadbalancer(rt: &Runtime, listeners: &BTreeMap<String, Arc<ListenerStats>>) -> Value {
    let snap = rt.snapshot();
    let mut pools: Vec<Value> = snap.pools.iter().map(|p| pool_status(p)).collect();
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
        "listeners": listeners,
        "pools": pools,
        "events": events,
    })
}
