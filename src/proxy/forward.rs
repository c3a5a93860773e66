//! One request's attempts at a pool: pick, send, classify the outcome (for retries and
//! outlier detection), and retry on another backend only when it is safe.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{RETRY_AFTER, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::body::{Exchange, ProxyBody, RequestBody, UpstreamBody};
use super::headers;
use super::local;
use super::upstream::{Sent, UpstreamError};
use super::websocket;
use crate::affinity::Resolved;
use crate::balance::PickContext;
use crate::health::events::EventLog;
use crate::health::outlier::{self, Outcome};
use crate::runtime::Pool;

/// Response header telling how many attempts a request took (only when more than one).
pub const TRIES_HEADER: &str = "x-autolb-tries";

/// How an attempt ended, when it gave no response to forward.
enum Failure {
    Upstream(UpstreamError),
    /// A response status listed in `retry_on`, discarded before anything was forwarded.
    Status(u16),
}

impl Failure {
    /// Why the request goes again: an index into `PoolStats::retries` (`RETRY_REASONS`).
    fn reason(&self) -> usize {
        match self {
            Failure::Upstream(e) if e.is_connect_failure() => 0,
            Failure::Upstream(e) if e.is_timeout() => 1,
            Failure::Upstream(_) => 2,
            Failure::Status(_) => 3,
        }
    }
}

/// Where a request should go, decided by `proxy` before the first pick.
#[derive(Default)]
pub struct Plan {
    /// The pool's hash key (consistent_hash).
    pub hash: Option<u64>,
    /// Sticky sessions: the pinned backend and the one the client's cookie names.
    pub affinity: Resolved,
    /// The client sees https (for the cookie's Secure attribute).
    pub https: bool,
    /// The pool is in panic mode (health ignored).
    pub panic: bool,
    /// A WebSocket upgrade: the client side, taken over after a 101.
    pub upgrade: Option<OnUpgrade>,
    /// `learn_cookie`: learn the session the answering backend sets.
    pub learned: Option<crate::state::learned::Session>,
    /// Time the request waited for the pool (a first instance, a `limits:` slot).
    pub queued: std::time::Duration,
}

/// Send `req` to `pool`, retrying on other backends while it is safe.
pub async fn forward(
    parts: Parts,
    body: super::body_rate::ClientBody,
    pool: &Arc<Pool>,
    mut plan: Plan,
    events: &Arc<EventLog>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let attempts = pool.retries + 1;
    // A request that may go again after it was sent (idempotent, no body): the upstream
    // client keeps it (its own client at no cost, hyper's as a copy of the head).
    let resendable =
        attempts > 1 && body.is_end_stream() && pool.retry_methods.contains(&parts.method);
    let mut next = Some(Request::from_parts(parts, RequestBody::Client(body)));
    let mut pick = PickContext {
        hash: plan.hash,
        exclude: 0,
        panic: plan.panic,
    };
    pool.stats.active.fetch_add(1, Ordering::Relaxed);
    let mut last: Option<Failure> = None;
    for attempt in 0..attempts {
        let Some(req) = next.take() else {
            break;
        };
        // The pinned backend first (sticky); then another one where one exists, else the
        // same one again.
        let pinned = plan
            .affinity
            .pinned
            .filter(|&i| attempt == 0 && i < pool.backends.len());
        let Some(idx) = pinned
            .or_else(|| pool.balancer.pick(&pool.backends, &pick))
            .or_else(|| {
                (attempt > 0)
                    .then(|| {
                        pool.balancer
                            .pick(&pool.backends, &PickContext { exclude: 0, ..pick })
                    })
                    .flatten()
            })
        else {
            break;
        };
        if idx < 64 {
            pick.exclude |= 1 << idx;
        }
        let backend = &pool.backends[idx];
        if let Some(why) = &last {
            pool.stats.retries[why.reason()].fetch_add(1, Ordering::Relaxed);
        }
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        let t = &pool.timeouts;
        let more = attempt + 1 < attempts;
        let sent = backend
            .conns
            .send(req, resendable && more, t.connect, t.response, t.idle)
            .await;
        match sent {
            Ok(Sent {
                response: mut resp,
                conn,
                request,
                connect,
            }) => {
                let now = Instant::now();
                let ttfb = now.saturating_duration_since(sent_at);
                backend.stats.record_latency(ttfb, now);
                let status = resp.status().as_u16();
                backend.stats.record_status(status);
                let outcome = if status >= 500 {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                outlier::observe(pool, backend, outcome, events);
                if more && request.is_some() && pool.retry_on.statuses.contains(&status) {
                    // Nothing was forwarded yet: drop this answer and try elsewhere.
                    next = request;
                    backend.stats.active.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(pool = %pool.name, backend = %backend.address, status, attempt = attempt + 1, "retrying on status");
                    last = Some(Failure::Status(status));
                    continue;
                }
                let switching = status == 101;
                let backend_side = switching.then(|| hyper::upgrade::on(&mut resp));
                let (mut head, incoming) = resp.into_parts();
                // The client's connection speaks autolb's HTTP version, not the backend's.
                if head.version == Version::HTTP_10 {
                    head.version = Version::HTTP_11;
                }
                headers::strip_hop_by_hop(&mut head.headers, switching);
                if attempt > 0 {
                    head.headers
                        .insert(TRIES_HEADER, HeaderValue::from(attempt + 1));
                }
                if let Some(learned) = &plan.learned {
                    learned.observe(pool, idx, &head.headers);
                }
                if let Some(aff) = pool.affinity.as_ref() {
                    if plan.affinity.cookie_backend != Some(idx) {
                        if let Some(cookie) = aff.set_cookie(idx, plan.https) {
                            head.headers.append(SET_COOKIE, cookie);
                        }
                    }
                }
                let mut exchange = Exchange {
                    backend: backend.clone(),
                    pool: pool.stats.clone(),
                    started,
                    status,
                    conn,
                    tries: attempt + 1,
                    bytes: 0,
                    timing: crate::observe::Timing {
                        queued: plan.queued,
                        connect,
                        ttfb,
                    },
                };
                if let Some(backend_side) = backend_side {
                    // The connection is the tunnel's now, never back in the pool.
                    exchange.conn = None;
                    let Some(client_side) = plan.upgrade.take() else {
                        tracing::warn!(pool = %pool.name, backend = %backend.address, "101 to a request that asked for no upgrade: 502");
                        exchange.finish(false);
                        return local::error(
                            StatusCode::BAD_GATEWAY,
                            "backend failed",
                            Some(&pool.name),
                        );
                    };
                    websocket::spawn(
                        client_side,
                        backend_side,
                        backend.clone(),
                        pool.name.clone(),
                        t.websocket_idle,
                    );
                    let timing = exchange.timing;
                    exchange.finish(true);
                    websocket::mark_upgrade(&mut head.headers);
                    // Who answered, for the access log (a normal response tells it by its body).
                    head.extensions.insert(crate::observe::Served {
                        backend: backend.clone(),
                        tries: attempt + 1,
                        timing,
                    });
                    return Response::from_parts(head, ProxyBody::empty());
                }
                let body = ProxyBody::Upstream(UpstreamBody::new(incoming, exchange, t.idle));
                return Response::from_parts(head, body);
            }
            Err(failed) => {
                backend.stats.active.fetch_sub(1, Ordering::Relaxed);
                if super::body_rate::client_too_slow(&failed.error) {
                    last = Some(Failure::Upstream(failed.error)); // the client's fault: 408
                    break;
                }
                backend.stats.record_failure();
                let e = &failed.error;
                let (outcome, allowed) = if e.is_connect_failure() {
                    (Outcome::ConnectFailure, pool.retry_on.connect_failure)
                } else if e.is_timeout() {
                    (Outcome::Timeout, pool.retry_on.timeout)
                } else {
                    (Outcome::Reset, pool.retry_on.reset)
                };
                outlier::observe(pool, backend, outcome, events);
                tracing::warn!(
                    pool = %pool.name,
                    backend = %backend.address,
                    attempt = attempt + 1,
                    error = %e,
                    "backend failed"
                );
                // Unsent requests go again as they are; sent ones only when resendable.
                let retry = more && allowed && failed.request.is_some();
                next = failed.request;
                last = Some(Failure::Upstream(failed.error));
                if !retry {
                    break;
                }
            }
        }
    }
    pool.stats.active.fetch_sub(1, Ordering::Relaxed);
    pool.stats.local_errors.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(started);
    pool.stats.window.record(elapsed, true, now);
    pool.stats.histogram.record(elapsed);
    failure_response(pool, last)
}

fn failure_response(pool: &Pool, last: Option<Failure>) -> Response<ProxyBody> {
    match last {
        None => {
            tracing::warn!(pool = %pool.name, "no usable backend: 503");
            let mut resp = local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend available",
                Some(&pool.name),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(pool.retry_after_secs()));
            resp
        }
        Some(Failure::Upstream(e)) if super::body_rate::client_too_slow(&e) => {
            tracing::info!(pool = %pool.name, error = %e, "request body too slow: 408");
            super::body_rate::timeout_response(&pool.name)
        }
        Some(Failure::Upstream(e)) if e.is_timeout() => {
            tracing::warn!(pool = %pool.name, error = %e, "backend timed out: 504");
            local::error(
                StatusCode::GATEWAY_TIMEOUT,
                "backend timed out",
                Some(&pool.name),
            )
        }
        Some(Failure::Upstream(e)) => {
            tracing::warn!(pool = %pool.name, error = %e, "backend failed: 502");
            local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name))
        }
        Some(Failure::Status(status)) => {
            tracing::warn!(pool = %pool.name, status, "every try answered a retryable status: 502");
            local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name))
        }
    }
}
