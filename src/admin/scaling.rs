//! `POST /scaling/manual {"pool","instances","reason"}`: 202 and the scaling event, or 400
//! with the reason. `pool` may be left out when exactly one pool autoscales.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::{error, json, AdminState};

/// Largest JSON body the admin API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// Read a small JSON object body.
pub async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read body: {e}"))?
        .to_bytes();
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    Ok(v)
}

pub async fn manual(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let autoscaled: Vec<String> = state
        .runtime
        .snapshot()
        .config
        .pools
        .iter()
        .filter(|p| p.autoscale.is_some())
        .map(|p| p.name.clone())
        .collect();
    let pool = match v.get("pool") {
        Some(p) => match p.as_str() {
            Some(p) => p.to_string(),
            None => return error(StatusCode::BAD_REQUEST, "\"pool\" must be a string"),
        },
        None => match autoscaled.as_slice() {
            [only] => only.clone(),
            [] => return error(StatusCode::BAD_REQUEST, "no pool autoscales"),
            several => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "\"pool\" is required: several pools autoscale ({})",
                        several.join(", ")
                    ),
                )
            }
        },
    };
    let Some(instances) = v.get("instances").and_then(|n| n.as_i64()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "\"instances\" (an integer) is required",
        );
    };
    let reason = match v.get("reason") {
        None => "manual",
        Some(r) => match r.as_str() {
            Some(r) => r,
            None => return error(StatusCode::BAD_REQUEST, "\"reason\" must be a string"),
        },
    };
    match state.autoscaler.manual(&pool, instances, reason) {
        Ok(answer) => json(StatusCode::ACCEPTED, &answer),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}
