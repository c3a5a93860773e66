//! The probes of an orchestrator (Kubernetes liveness and readiness): `GET /health/live`
//! answers 200 while the process works (draining included: a drain is no reason to kill
//! it); `GET /health/ready` answers 200 only when every configured listener is bound, a
//! config is loaded, and (unless `admin.ready_requires_backend: false`) at least one pool
//! has a ready backend, and 503 from the moment a drain begins, so that a load balancer in
//! front stops sending new connections before the listeners close.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{json, AdminState};

/// `GET /health/live`.
pub fn live() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &json!({ "status": "live" }))
}

/// `GET /health/ready`: 200 or 503, with each check and why it failed.
pub fn ready(state: &AdminState) -> Response<Full<Bytes>> {
    let snap = state.runtime.snapshot();
    let draining = *state.draining.borrow() != crate::server::Drain::Serving;
    let missing: Vec<&str> = snap
        .config
        .listeners
        .iter()
        .filter(|l| state.listeners.get(&l.name).is_none())
        .map(|l| l.name.as_str())
        .collect();
    let required = snap.config.admin.ready_requires_backend;
    let ready_pools: Vec<&str> = snap
        .pools
        .iter()
        .filter(|p| p.ready_backends() > 0)
        .map(|p| p.name.as_str())
        .collect();
    let backends_ok = !required || !ready_pools.is_empty();
    let ok = !draining && missing.is_empty() && backends_ok;
    let mut reasons: Vec<Value> = Vec::new();
    if draining {
        reasons.push("draining: shutting down".into());
    }
    if !missing.is_empty() {
        reasons.push(format!("listeners not bound: {}", missing.join(", ")).into());
    }
    if !backends_ok {
        reasons.push("no pool has a ready backend".into());
    }
    let status = if draining {
        "draining"
    } else if ok {
        "ready"
    } else {
        "not_ready"
    };
    let body = json!({
        "status": status,
        "reasons": reasons,
        "checks": {
            "draining": draining,
            "listeners": { "ok": missing.is_empty(), "not_bound": missing },
            "config": { "ok": true, "generation": snap.generation },
            "backends": {
                "ok": backends_ok,
                "required": required,
                "pools_with_ready_backend": ready_pools,
            },
        },
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &body)
}
