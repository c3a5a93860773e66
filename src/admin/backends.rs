//! `POST /backends/state {"pool","backend","state":"ready|drain|maint","weight"?}`: HAProxy's
//! `set server state` / `set server weight`. 200 and the backend as `/loadbalancer/status`
//! shows it; 400 for a bad body or weight; 404 for an unknown pool or backend.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::scaling::read_json;
use super::{error, json, AdminState};
use crate::runtime::{BackendMode, OverrideError};

pub async fn set_state(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if let Some(k) = v.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["pool", "backend", "state", "weight"].contains(&k.as_str()))
    }) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("unknown field \"{k}\" (expected pool, backend, state, weight)"),
        );
    }
    let text = |key: &str| v.get(key).and_then(|p| p.as_str());
    let Some(pool) = text("pool") else {
        return error(StatusCode::BAD_REQUEST, "\"pool\" (a string) is required");
    };
    let Some(backend) = text("backend") else {
        return error(
            StatusCode::BAD_REQUEST,
            "\"backend\" (a string: its address as /loadbalancer/status shows it) is required",
        );
    };
    let Some(mode) = text("state").and_then(BackendMode::parse) else {
        return error(
            StatusCode::BAD_REQUEST,
            "\"state\" must be \"ready\", \"drain\" or \"maint\"",
        );
    };
    let weight = match v.get("weight") {
        None | Some(serde_json::Value::Null) => None,
        Some(w) => match w.as_u64() {
            Some(w) => Some(w),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "\"weight\" must be an integer between 1 and 256",
                )
            }
        },
    };
    match state.runtime.set_backend_state(pool, backend, mode, weight) {
        Ok(snap) => {
            let b = snap
                .pool(pool)
                .and_then(|p| p.backends.iter().find(|b| b.address == backend));
            tracing::info!(
                pool,
                backend,
                state = mode.as_str(),
                weight = b.map(|b| b.weight),
                "backend state set through the admin API"
            );
            json(
                StatusCode::OK,
                &json!({
                    "pool": pool,
                    "backend": backend,
                    "state": mode.as_str(),
                    "weight": b.map(|b| b.weight),
                    "config_weight": b.map(|b| b.config_weight),
                    "health": b.map(|b| super::status::health_name(b)),
                }),
            )
        }
        Err(e @ OverrideError::Weight(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}
