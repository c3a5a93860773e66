//! HTTP proxying on hyper: route a request to a pool, pick a backend, rewrite headers, send
//! it over a pooled keep-alive connection and stream the answer back; 502/503/504 otherwise.

pub mod body;
pub mod headers;
pub mod local;
pub mod upstream;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::affinity;
use crate::balance::PickContext;
use crate::config::Algorithm;
use crate::runtime::{Pool, Runtime};
use body::{Exchange, ProxyBody, UpstreamBody};
use headers::ClientInfo;

/// Per-connection facts the proxy needs for each request.
pub struct ConnContext {
    pub runtime: Arc<Runtime>,
    /// Index of the listener in the snapshot.
    pub listener: usize,
    pub client: ClientInfo,
}

/// hyper service entry point for one request.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(proxy(req, &ctx).await)
}

/// The request's authority: the URI's (absolute-form) or the Host header.
fn authority(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    }
}

/// Host without port, for routing.
fn host_name(authority: &HeaderValue) -> &str {
    let s = authority.to_str().unwrap_or("");
    if s.starts_with('[') {
        // [v6]:port
        return s.split_once(']').map_or(s, |(h, _)| &h[1..]);
    }
    s.rsplit_once(':').map_or(s, |(h, _)| h)
}

async fn proxy(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    let snapshot = ctx.runtime.snapshot();
    let authority = authority(&req);
    let host = authority.as_ref().map_or("", host_name);
    let Some(pool_idx) = snapshot.select_pool(ctx.listener, host, req.uri().path()) else {
        tracing::info!(host, path = req.uri().path(), "no route matches");
        return local::error(StatusCode::NOT_FOUND, "no route for this request", None);
    };
    let pool = &snapshot.pools[pool_idx];

    let (mut parts, body) = req.into_parts();
    let hash = match pool.algorithm {
        Algorithm::ConsistentHash => affinity::hash_key(&pool.hash_key, &parts, ctx.client.ip),
        _ => None,
    };
    headers::rewrite_request(&mut parts.headers, &ctx.client, authority.as_ref(), false);
    if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
        // Absolute-form from the client: backends get origin-form; Host carries the authority.
        if let Some(a) = &authority {
            parts.headers.insert(HOST, a.clone());
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = http::Version::HTTP_11;
    forward(Request::from_parts(parts, body), pool, hash).await
}

/// Pick, send, and retry on another backend while nothing of the request was sent.
async fn forward(
    mut req: Request<Incoming>,
    pool: &Arc<Pool>,
    hash: Option<u64>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let mut pick = PickContext { hash, exclude: 0 };
    let attempts = pool.retries + 1;
    pool.stats.active.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    for attempt in 0..attempts {
        let Some(idx) = pool.balancer.pick(&pool.backends, &pick) else {
            break;
        };
        if idx < 64 {
            pick.exclude |= 1 << idx;
        }
        let backend = &pool.backends[idx];
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        let t = &pool.timeouts;
        match backend.conns.send(req, t.connect, t.response, t.idle).await {
            Ok((resp, conn)) => {
                let now = Instant::now();
                backend
                    .stats
                    .record_latency(now.saturating_duration_since(sent_at), now);
                let status = resp.status().as_u16();
                backend.stats.record_status(status);
                let (mut parts, incoming) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                let exchange = Exchange {
                    backend: backend.clone(),
                    pool: pool.stats.clone(),
                    started,
                    status,
                    conn: Some(conn),
                };
                let body = ProxyBody::Upstream(UpstreamBody::new(incoming, exchange, t.idle));
                return Response::from_parts(parts, body);
            }
            Err(failed) => {
                backend.stats.active.fetch_sub(1, Ordering::Relaxed);
                backend.stats.record_failure();
                tracing::warn!(
                    pool = %pool.name,
                    backend = %backend.address,
                    attempt = attempt + 1,
                    error = %failed.error,
                    "backend failed"
                );
                match failed.request {
                    Some(unsent) if attempt + 1 < attempts => {
                        req = unsent;
                        last_error = Some(failed.error);
                    }
                    _ => {
                        last_error = Some(failed.error);
                        break;
                    }
                }
            }
        }
    }
    pool.stats.active.fetch_sub(1, Ordering::Relaxed);
    pool.stats.local_errors.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    pool.stats
        .window
        .record(now.saturating_duration_since(started), true, now);
    pool.stats
        .histogram
        .record(now.saturating_duration_since(started));
    match last_error {
        None => {
            tracing::warn!(pool = %pool.name, "no usable backend: 503");
            local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend available",
                Some(&pool.name),
            )
        }
        Some(e) if e.is_timeout() => {
            tracing::warn!(pool = %pool.name, error = %e, "backend timed out: 504");
            local::error(
                StatusCode::GATEWAY_TIMEOUT,
                "backend timed out",
                Some(&pool.name),
            )
        }
        Some(e) => {
            tracing::warn!(pool = %pool.name, error = %e, "backend failed: 502");
            local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(
            host_name(&HeaderValue::from_static("a.example:8080")),
            "a.example"
        );
        assert_eq!(
            host_name(&HeaderValue::from_static("a.example")),
            "a.example"
        );
        assert_eq!(host_name(&HeaderValue::from_static("[::1]:80")), "::1");
    }
}
