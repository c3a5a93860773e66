//! `POST /cache/purge {"url"} | {"host","path_prefix"}`: removes what matches from every
//! HTTP cache of this node, and (with `state.backend: redis`) of every node of the fleet.
//! 200 with what was purged; 400 for a bad body.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::scaling::read_json;
use super::{error, json, AdminState};
use crate::cache::Purge;

pub async fn purge(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let purge = match Purge::from_json(&v) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let caches = crate::state::purge::apply(&state.runtime, &purge);
    let fleet = state.shared.purges.broadcast(&purge).await;
    tracing::info!(?purge, caches, fleet, "cache purge through the admin API");
    json(
        StatusCode::OK,
        &json!({ "purged": v, "caches": caches, "fleet": fleet }),
    )
}
