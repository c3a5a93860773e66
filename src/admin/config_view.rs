//! The running config as the dashboard's config view shows it: its source, hash and
//! generation, listeners -> routes -> pools with their rate limits and concurrency limits,
//! and the recent reloads (refused ones with their errors). Part of `/loadbalancer/status`.

use serde_json::{json, Value};

use crate::config::{IpRateLimit, RateLimitScope};
use crate::runtime::Snapshot;

fn per_ip(r: &Option<IpRateLimit>) -> Value {
    r.as_ref().map_or(
        Value::Null,
        |r| json!({ "per_ip": r.per_ip, "burst": r.burst }),
    )
}

/// The `config` object of `/loadbalancer/status`; `reloads` is the reload history.
pub fn view(snap: &Snapshot, reloads: Value) -> Value {
    let c = &snap.config;
    let listeners: Vec<Value> = c
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "listen": l.listen.to_string(),
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "pool": l.pool,
                "rate_limit": per_ip(&l.rate_limit),
            })
        })
        .collect();
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            json!({
                "host": r.host,
                "path_prefix": r.path_prefix,
                "pool": r.pool,
                "rate_limit": per_ip(&r.rate_limit),
            })
        })
        .collect();
    let pools: Vec<Value> = c
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "backends": p.backends.len(),
                "autoscaled": p.autoscale.is_some(),
                "rate_limit": p.rate_limit.as_ref().map(|r| json!({
                    "rate": r.rate,
                    "burst": r.burst,
                    "scope": match r.scope {
                        RateLimitScope::Cluster => "cluster",
                        RateLimitScope::Node => "node",
                    },
                })),
                "limits": p.limits.as_ref().map(|l| json!({
                    "max_inflight": l.max_inflight,
                    "max_queue": l.max_queue,
                    "queue_timeout_ms": l.queue_timeout.as_millis() as u64,
                })),
            })
        })
        .collect();
    json!({
        "source": c.source.display().to_string(),
        "hash": c.hash,
        "generation": snap.generation,
        "updates": {
            "autoscaler": snap.autoscaler_updates,
            "backend_states": snap.backend_state_changes,
        },
        "listeners": listeners,
        "routes": routes,
        "pools": pools,
        "reloads": reloads,
    })
}
