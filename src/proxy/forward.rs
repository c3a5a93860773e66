//! One request's attempts at a pool: prepare its body, then for each attempt pick (through
//! `attempts`), send, look at what came back (a response broken before anything of it was
//! forwarded is a failed attempt; a status listed in `retry_on` is dropped), classify
//! failures (`retry`), retry where the policy allows, all within `timeouts.request_total`;
//! then finish the response (`respond`) or answer the failure (`failure_response`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, RETRY_AFTER, SET_COOKIE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::time::Instant;

use super::attempts::Broken;
use super::attempts::{AttemptError, Attempts, Failure};
use super::body::{End, Exchange, ProxyBody, UpstreamBody};
use super::headers;
use super::local;
use super::retry::{classify, Budget, Class};
use super::websocket;
use crate::affinity::Resolved;
use crate::balance::PickContext;
use crate::health::outlier::Outcome;
use crate::log_throttle::warn_throttled;
use crate::runtime::events::EventLog;
use crate::runtime::Pool;
use crate::upstream::client_fault::FaultWatch;
use crate::upstream::{AttemptLimits, RequestBody, Sent, UpstreamIncoming};

/// Response header telling how many attempts a request took (only when more than one).
pub const TRIES_HEADER: &str = "x-autolb-tries";

/// Where a request should go, decided by `proxy` before the first pick.
pub struct Plan<'a> {
    /// The pool's hash key (consistent_hash).
    pub hash: Option<u64>,
    /// Sticky sessions: the pinned backend and the one the client's cookie names.
    pub affinity: Resolved,
    /// The client sees https (for the cookie's Secure attribute).
    pub https: bool,
    /// The pool is in panic mode (health ignored).
    pub panic: bool,
    /// A WebSocket upgrade: the client side, taken over after a 101.
    pub upgrade: Option<websocket::Upgrade>,
    /// The upgrade is an HTTP/2 extended CONNECT (RFC 8441): the client gets a 200.
    pub h2_websocket: bool,
    /// `learn_cookie`: learn the session the answering backend sets.
    pub learned: Option<crate::state::learned::Session>,
    /// Time the request waited for the pool (a first instance, a `limits:` slot).
    pub queued: std::time::Duration,
    /// `timeouts.request_total`, counted from when the request arrived (a gRPC call's
    /// deadline).
    pub budget: Budget,
    /// Where a backend's 1xx responses go (HTTP/1.1 clients only).
    pub interim: Option<&'a crate::upstream::interim::Slot>,
    /// A gRPC call: its deadline decides the attempts' timeouts.
    pub grpc: Option<super::grpc::Call>,
    /// A gRPC call's request stream: while it flows, the answer is not idle.
    pub progress: Option<crate::upstream::progress::Progress>,
    /// A gRPC-Web text call: its body is base64.
    pub web_text: bool,
    /// The listener's `limits.response_buffer`.
    pub response_buffer: usize,
}

impl Plan<'_> {
    /// The plan of a request nobody waits for (a cache refresh in the background): no
    /// client to send 1xx responses to.
    pub fn detached(self) -> Plan<'static> {
        Plan {
            hash: self.hash,
            affinity: self.affinity,
            https: self.https,
            panic: self.panic,
            upgrade: self.upgrade,
            learned: self.learned,
            queued: self.queued,
            budget: self.budget,
            interim: None,
            grpc: self.grpc,
            progress: self.progress,
            web_text: self.web_text,
            response_buffer: self.response_buffer,
            h2_websocket: self.h2_websocket,
        }
    }
}

/// A request ready for its attempts: its body wrapped for them, and what the attempts need
/// to know of it.
struct Prepared {
    req: Request<RequestBody>,
    /// It may go again after it was sent (idempotent and bodiless, or a gRPC call whose
    /// body is copied): the upstream client keeps it (its own client at no cost, hyper's
    /// as a copy of the head).
    resendable: bool,
    /// How the client's body failed, if it does (hyper's HTTP/2 client reports a stream
    /// reset of its own).
    body_fault: Option<FaultWatch>,
    /// A gRPC call with gRPC statuses in `retry_on`: its body is copied for a retry.
    replay: Option<super::grpc_retry::Replay>,
}

fn prepare(
    parts: Parts,
    body: crate::upstream::client_body::ClientBody,
    pool: &Pool,
    plan: &Plan<'_>,
) -> Prepared {
    let attempts = pool.retries + 1;
    let mut resendable =
        attempts > 1 && body.is_end_stream() && pool.retry_methods.contains(&parts.method);
    let body_fault = body.watch();
    let replay =
        (attempts > 1 && plan.grpc.is_some() && !plan.web_text && !pool.retry_on.grpc.is_empty())
            .then(super::grpc_retry::Replay::default);
    let body = match &replay {
        Some(r) => {
            resendable = true;
            RequestBody::Transformed(Box::pin(r.tee(body)))
        }
        None if plan.web_text => {
            let text = super::grpc_web::TextBody::new(body, body_fault.clone());
            RequestBody::Transformed(Box::pin(text))
        }
        None => RequestBody::Client(body),
    };
    Prepared {
        req: Request::from_parts(parts, body),
        resendable,
        body_fault,
        replay,
    }
}

/// Send `req` to `pool`, retrying on other backends while it is safe (`attempts.rs` keeps
/// what goes from one attempt to the next).
pub async fn forward(
    parts: Parts,
    body: crate::upstream::client_body::ClientBody,
    pool: &Arc<Pool>,
    mut plan: Plan<'_>,
    events: &Arc<EventLog>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let attempts = pool.retries + 1;
    let Prepared {
        req,
        resendable,
        body_fault,
        replay,
    } = prepare(parts, body, pool, &plan);
    let mut next = Some(req);
    let pick = PickContext {
        hash: plan.hash,
        exclude: 0,
        panic: plan.panic,
    };
    let mut tries = Attempts::new(pool, events, pick, plan.affinity.pinned);
    pool.stats.active.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..attempts {
        let Some(req) = next.take() else {
            break;
        };
        let t = &pool.timeouts;
        let limits = match &plan.grpc {
            Some(call) => call.attempt(&plan.budget, Instant::now(), t.connect, t.response),
            None => plan.budget.attempt(Instant::now(), t.connect, t.response),
        };
        let Some(limits) = limits else {
            tries.last = Some(Failure::Exhausted);
            break;
        };
        let Some((idx, pinned)) = tries.choose(attempt) else {
            break;
        };
        let backend = &pool.backends[idx];
        backend.stats.begin();
        if pinned {
            backend.stats.pinned.fetch_add(1, Ordering::Relaxed);
        }
        let sent_at = Instant::now();
        let more = attempt + 1 < attempts;
        let sent = backend
            .conns
            .send(
                req,
                resendable && more,
                AttemptLimits {
                    connect: limits.connect,
                    response: limits.response,
                    max_idle: t.idle,
                    response_buffer: plan.response_buffer,
                },
                plan.interim,
            )
            .await;
        let (class, request, error) = match sent {
            Ok(Sent {
                response,
                conn,
                request,
                connect,
            }) => {
                let now = Instant::now();
                let ttfb = now.saturating_duration_since(sent_at);
                backend.stats.record_latency(ttfb, now);
                let (head, mut incoming) = response.into_parts();
                let first = match inspect(&head, &mut incoming) {
                    Ok(first) => first,
                    Err(broken) => {
                        // Nothing was forwarded: a failed attempt like a reset, but never
                        // sent back to this backend.
                        drop((incoming, conn));
                        let error = AttemptError::Broken(broken);
                        if !tries.failed(
                            idx,
                            attempt,
                            Class::Malformed,
                            error,
                            request.is_some(),
                            more,
                        ) {
                            break;
                        }
                        next = request;
                        continue;
                    }
                };
                let status = head.status.as_u16();
                let (request, grpc_code) = match &replay {
                    None => (request, None),
                    Some(r) => {
                        let ended = incoming.is_end_stream();
                        let code =
                            super::grpc_retry::retry_code(&pool.retry_on, &head.headers, ended);
                        (r.restore(request), code)
                    }
                };
                if more && request.is_some() {
                    // Nothing was forwarded yet: an answer listed in `retry_on` is dropped
                    // and the request tried elsewhere (a Trailers-Only gRPC status, or an
                    // HTTP status).
                    if let Some(code) = grpc_code {
                        tracing::info!(pool = %pool.name, backend = %backend.address, grpc_status = code, attempt = attempt + 1, "retrying on gRPC status");
                        tries.discard_answer(idx, status, true);
                        next = request;
                        continue;
                    }
                    if pool.retry_on.statuses.contains(&status) {
                        tracing::info!(pool = %pool.name, backend = %backend.address, status, attempt = attempt + 1, "retrying on status");
                        tries.discard_answer(idx, status, false);
                        next = request;
                        continue;
                    }
                }
                let exchange = Exchange {
                    backend: backend.clone(),
                    pool: pool.clone(),
                    events: events.clone(),
                    started,
                    status,
                    conn,
                    tries: attempt + 1,
                    bytes: 0,
                    timing: crate::accesslog::Timing {
                        queued: plan.queued,
                        connect,
                        ttfb,
                    },
                };
                // Its interim responses go out before it.
                if let Some(interim) = plan.interim.and_then(|slot| slot.get()) {
                    interim.flushed().await;
                }
                return respond(pool, idx, &mut plan, head, exchange, incoming, first);
            }
            Err(failed) => {
                let fault = body_fault.as_ref().and_then(|w| w.get());
                let class = classify(&failed.error, limits.cut, fault);
                let request = match &replay {
                    Some(r) => r.restore(failed.request),
                    None => failed.request,
                };
                (class, request, AttemptError::Upstream(failed.error))
            }
        };
        if !tries.failed(idx, attempt, class, error, request.is_some(), more) {
            break;
        }
        next = request;
    }
    pool.stats.active.fetch_sub(1, Ordering::Relaxed);
    pool.stats.local_errors.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(started);
    pool.stats.window.record(elapsed, true, now);
    pool.stats.histogram.record(elapsed);
    failure_response(pool, tries.last)
}

/// A response head and what came with it: the body's first frame when it is already at
/// hand, or why the response is broken (then nothing of it is forwarded). hyper's client
/// reads a response with both Transfer-Encoding and Content-Length as chunked; such a
/// response is refused, as the own client refuses it.
fn inspect(
    head: &http::response::Parts,
    body: &mut UpstreamIncoming,
) -> Result<Option<Frame<Bytes>>, Broken> {
    if let UpstreamIncoming::Hyper(_) = body {
        let h = &head.headers;
        if head.version != Version::HTTP_2
            && h.contains_key(TRANSFER_ENCODING)
            && h.contains_key(CONTENT_LENGTH)
        {
            return Err(Broken::Framing);
        }
    }
    match body.first_frame() {
        None => Ok(None),
        Some(Ok(frame)) => Ok(Some(frame)),
        Some(Err(e)) => Err(Broken::Body(e)),
    }
}

/// The response to forward: the backend's head (rewritten for the client) and body, or,
/// after a 101, the tunnel taking both connections over.
fn respond(
    pool: &Arc<Pool>,
    idx: usize,
    plan: &mut Plan<'_>,
    mut head: http::response::Parts,
    mut exchange: Exchange,
    incoming: UpstreamIncoming,
    first: Option<Frame<Bytes>>,
) -> Response<ProxyBody> {
    let backend = &pool.backends[idx];
    let tries = exchange.tries;
    let switching = exchange.status == 101;
    // The client's connection speaks autolb's HTTP version, not the backend's.
    if head.version == Version::HTTP_10 {
        head.version = Version::HTTP_11;
    }
    headers::strip_hop_by_hop(&mut head.headers, switching);
    if plan.grpc.is_some() {
        // A Trailers-Only answer: the call's status is in its headers.
        super::grpc::count(&pool.stats, &head.headers);
    }
    if tries > 1 {
        head.headers.insert(TRIES_HEADER, HeaderValue::from(tries));
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
    if switching {
        let mut resp = Response::from_parts(head, incoming);
        let backend_side = hyper::upgrade::on(&mut resp);
        let mut head = resp.into_parts().0;
        // The connection is the tunnel's now, never back in the pool.
        exchange.conn = None;
        let Some(client_side) = plan.upgrade.take() else {
            let error = "101 to a request that asked for no upgrade";
            exchange.finish(End::Broken(Outcome::Reset, &error));
            return local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name));
        };
        websocket::spawn(
            client_side,
            backend_side,
            backend.clone(),
            pool.name.clone(),
            pool.timeouts.websocket_idle,
        );
        let timing = exchange.timing;
        exchange.finish(End::Complete);
        if plan.h2_websocket {
            websocket::h2_accepted(&mut head);
        } else {
            websocket::mark_upgrade(&mut head.headers);
        }
        // Who answered, for the access log (a normal response tells it by its body).
        head.extensions.insert(crate::proxy::observe::Served {
            backend: backend.clone(),
            tries,
            timing,
        });
        return Response::from_parts(head, ProxyBody::empty());
    }
    let body = UpstreamBody::new(incoming, first, exchange, pool.timeouts.idle)
        .with_progress(plan.progress.take());
    Response::from_parts(head, ProxyBody::Upstream(body))
}

fn failure_response(pool: &Pool, last: Option<Failure>) -> Response<ProxyBody> {
    let log = &pool.stats.log;
    match last {
        None => {
            warn_throttled!(log, pool = %pool.name; "no usable backend: 503");
            let mut resp = local::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend available",
                Some(&pool.name),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(pool.retry_after_secs()));
            resp
        }
        Some(Failure::Attempt(Class::Client(fault), e)) => {
            // The client's doing: an INFO line, not a backend's WARN.
            use crate::upstream::client_fault::ClientFault;
            match fault {
                ClientFault::TooSlow => {
                    tracing::info!(pool = %pool.name, error = %e, "request body too slow: 408")
                }
                ClientFault::TooLarge => {
                    tracing::info!(pool = %pool.name, error = %e, "request body too large: 413")
                }
                ClientFault::Aborted => {
                    tracing::info!(pool = %pool.name, error = %e, "request body cut off by the client: 400")
                }
            }
            super::client_fault::fault_response(fault, &pool.name)
        }
        Some(Failure::Attempt(Class::Exhausted, e)) => {
            warn_throttled!(log, pool = %pool.name, error = %e; "timeouts.request_total over: 504");
            local::error(
                StatusCode::GATEWAY_TIMEOUT,
                "request timed out",
                Some(&pool.name),
            )
        }
        Some(Failure::Exhausted) => {
            warn_throttled!(log, pool = %pool.name; "timeouts.request_total over before a backend was tried: 504");
            local::error(
                StatusCode::GATEWAY_TIMEOUT,
                "request timed out",
                Some(&pool.name),
            )
        }
        Some(Failure::Attempt(Class::Timeout, e)) => {
            warn_throttled!(log, pool = %pool.name, error = %e; "backend timed out: 504");
            local::error(
                StatusCode::GATEWAY_TIMEOUT,
                "backend timed out",
                Some(&pool.name),
            )
        }
        Some(Failure::Attempt(_, e)) => {
            warn_throttled!(log, pool = %pool.name, error = %e; "backend failed: 502");
            local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name))
        }
        Some(Failure::Status(status)) => {
            warn_throttled!(log, pool = %pool.name, status; "every try answered a retryable status: 502");
            local::error(StatusCode::BAD_GATEWAY, "backend failed", Some(&pool.name))
        }
    }
}
