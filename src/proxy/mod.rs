//! HTTP proxying on hyper: route a request to a pool, apply its affinity, pick a backend,
//! rewrite headers, send it over a pooled keep-alive connection and stream the answer back
//! (or, after a 101, tunnel the WebSocket); 502/503/504 otherwise.

pub mod arena;
mod attempts;
pub mod body;
pub mod cached;
pub mod client_cert;
pub mod client_fault;
pub mod cold;
pub mod forward;
pub mod grpc;
pub mod grpc_retry;
pub mod grpc_web;
pub mod headers;
pub mod local;
pub mod normalize;
pub mod observe;
pub mod queue;
pub mod retry;
pub mod tunnel;
pub mod validate;
pub mod websocket;

use std::convert::Infallible;
use std::sync::Arc;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};

use crate::affinity::{self, Resolved};
use crate::config::Algorithm;
use crate::runtime::{Chosen, Runtime, Snapshot};
use crate::upstream::downstream::Downstream;
use body::ProxyBody;
use headers::ClientInfo;

/// Per-connection facts the proxy needs for each request.
pub struct ConnContext {
    pub runtime: Arc<Runtime>,
    /// This autolb's shared-state services: cluster rate limits, learned sessions.
    pub shared: Arc<crate::state::Shared>,
    /// Index of the listener in the snapshot.
    pub listener: usize,
    pub client: ClientInfo,
    /// The connection's addresses (client, and what it connected to), set when some pool
    /// sends PROXY headers: requests carry them to the backend connection (`send_proxy`).
    pub addrs: Option<crate::proxy_proto::ProxyAddrs>,
    /// The TLS version of an https connection, once its handshake is done (access logs).
    pub tls: std::sync::OnceLock<&'static str>,
    /// The client's verified certificate (`client_auth`), once the handshake is done.
    pub client_cert: std::sync::OnceLock<Arc<crate::tls::client_auth::ClientIdentity>>,
    /// The listener's `limits:` (hardening).
    pub limits: Arc<crate::config::Limits>,
    /// The listener's per-client-IP rate limit, shared by its connections.
    pub rate_limit: Option<Arc<crate::runtime::ip_limiter::IpLimiter>>,
    /// The listener's `normalize:` policy and counters.
    pub normalize: crate::uri::Normalizer,
    /// A backend's 1xx responses on their way to this (HTTP/1.1) client; made on the first
    /// one.
    pub interim: crate::upstream::interim::Slot,
}

/// A connection's context as a parked connection keeps it: nothing allocated for it alone
/// (the client's forwarding values are made again when it wakes).
pub struct ParkedContext {
    runtime: Arc<Runtime>,
    shared: Arc<crate::state::Shared>,
    listener: usize,
    ip: std::net::IpAddr,
    proto: &'static str,
    trusted: bool,
    addrs: Option<crate::proxy_proto::ProxyAddrs>,
    tls: Option<&'static str>,
    client_cert: Option<Arc<crate::tls::client_auth::ClientIdentity>>,
    limits: Arc<crate::config::Limits>,
    rate_limit: Option<Arc<crate::runtime::ip_limiter::IpLimiter>>,
    normalize: crate::uri::Normalizer,
}

impl ConnContext {
    /// What a parked connection keeps of it.
    pub fn park(&self) -> ParkedContext {
        ParkedContext {
            runtime: self.runtime.clone(),
            shared: self.shared.clone(),
            listener: self.listener,
            ip: self.client.ip,
            proto: self.client.proto,
            trusted: self.client.trusted,
            addrs: self.addrs,
            tls: self.tls.get().copied(),
            client_cert: self.client_cert.get().cloned(),
            limits: self.limits.clone(),
            rate_limit: self.rate_limit.clone(),
            normalize: self.normalize.clone(),
        }
    }
}

impl ParkedContext {
    /// The connection's context again, when it wakes.
    pub fn unpark(&self) -> ConnContext {
        let ctx = ConnContext {
            runtime: self.runtime.clone(),
            shared: self.shared.clone(),
            listener: self.listener,
            client: ClientInfo::new(self.ip, self.proto, self.trusted),
            addrs: self.addrs,
            tls: Default::default(),
            client_cert: Default::default(),
            limits: self.limits.clone(),
            rate_limit: self.rate_limit.clone(),
            normalize: self.normalize.clone(),
            interim: Default::default(),
        };
        if let Some(tls) = self.tls {
            let _ = ctx.tls.set(tls);
        }
        if let Some(cert) = &self.client_cert {
            let _ = ctx.client_cert.set(cert.clone());
        }
        ctx
    }

    /// The listener's `limits:`.
    pub fn limits(&self) -> &crate::config::Limits {
        &self.limits
    }
}

/// hyper service entry point for one request.
pub async fn handle(
    req: Request<Downstream>,
    ctx: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    crate::sched::cpu_share::note_work();
    // Before anything looks at the Host or the path: their normal forms, or a 400 (which
    // the access log still records).
    let mut req = req;
    let refused = validate::check_method(&req)
        .or_else(|| validate::check_target(&req, &ctx.limits))
        .or_else(|| normalize::request(&mut req, &ctx.normalize));
    if refused.is_some() {
        req.extensions_mut().insert(normalize::Refused);
    }
    let ctx = &*ctx;
    let is_grpc = grpc::is_grpc(req.headers());
    // The request's one look at the live config: a reload while it is served does not
    // change where it goes, how it is compressed or what its log line says.
    let snapshot = ctx.runtime.snapshot();
    let snap = &snapshot;
    Ok(
        crate::proxy::observe::around(req, ctx, snap, |req| async move {
            let (resp, chosen) = match refused {
                Some(resp) => (resp, None),
                None => {
                    let mut chosen = None;
                    (proxy(req, ctx, snap, &mut chosen).await, chosen)
                }
            };
            let resp = match is_grpc {
                true => grpc::local_answer(resp, snap),
                false => resp,
            };
            (resp, chosen)
        })
        .await,
    )
}

/// The request's authority: the URI's (absolute-form) or the Host header.
pub(crate) fn authority(req: &Request<Downstream>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    }
}

/// Host without port, for routing (the authority is in normal form: see `normalize`).
pub(crate) fn host_name(authority: &HeaderValue) -> &str {
    crate::uri::host::without_port(authority.to_str().unwrap_or(""))
}

/// The client sees https: X-Forwarded-Proto is a trusted proxy's, else the listener's.
pub(crate) fn client_https(fields: &http::HeaderMap, ctx: &ConnContext) -> bool {
    if ctx.client.trusted {
        fields
            .get(headers::X_FORWARDED_PROTO_NAME)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    } else {
        ctx.client.proto == "https"
    }
}

/// Proxy one request with `snapshot`; `chosen` says where it was routed (once it is).
async fn proxy(
    mut req: Request<Downstream>,
    ctx: &ConnContext,
    snapshot: &Arc<Snapshot>,
    chosen: &mut Option<Chosen>,
) -> Response<ProxyBody> {
    let arrived = tokio::time::Instant::now();
    let authority = authority(&req);
    let host = authority.as_ref().map_or("", host_name);
    let choice = snapshot.choose(ctx.listener, host, req.uri().path());
    // Routed first: a request refused here is still logged with its pool.
    *chosen = choice;
    if let Some(refused) = validate::check(&req, ctx) {
        return refused;
    }
    let Some(choice) = choice else {
        tracing::info!(host, path = req.uri().path(), "no route matches");
        return local::error(StatusCode::NOT_FOUND, "no route for this request", None);
    };
    let pool_idx = choice.pool;
    let route = choice.route.and_then(|i| snapshot.routes.get(i));
    if route.is_some_and(|r| r.client_cert_required) && ctx.client_cert.get().is_none() {
        return client_cert::forbidden(&snapshot.pools[pool_idx].name);
    }
    let limited = route.and_then(|r| validate::check_route(r, &snapshot.pools[pool_idx].name, ctx));
    if let Some(refused) = limited {
        return refused;
    }
    if let Some(retry_after) = ctx.shared.limits.check(snapshot, pool_idx) {
        let mut resp = local::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded",
            Some(&snapshot.pools[pool_idx].name),
        );
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(retry_after),
        );
        return resp;
    }
    let mut pool = &snapshot.pools[pool_idx];
    // `cache:` the route's, else the pool's: a hit is answered here.
    let mut through = None;
    if let Some(cache) = route.and_then(|r| r.cache.as_ref()).or(pool.cache.as_ref()) {
        match cached::begin(cache, &req, ctx, authority.as_ref(), pool).await {
            Ok(answer) => return answer,
            Err(t) => through = Some(t),
        }
    }
    // gRPC-Web (`grpc_web`): CORS preflights answered here; a call becomes gRPC.
    let mut web = None;
    let grpc_web = route.and_then(|r| r.grpc_web.as_ref());
    if let Some(cfg) = grpc_web.or(pool.grpc_web.as_ref()) {
        if let Some(resp) = grpc_web::preflight(cfg, req.method(), req.headers()) {
            return resp;
        }
        if let Some(mode) = grpc_web::mode(req.headers()) {
            web = Some((cfg.clone(), mode, req.headers().clone()));
            grpc_web::request_headers(req.headers_mut());
        }
    }
    let warmed;
    let mut queued = std::time::Duration::ZERO;
    if pool.cold_start.is_some() && pool.ready_backends() == 0 {
        let waiting = tokio::time::Instant::now();
        warmed = match cold::wait_for_ready(&ctx.runtime, pool).await {
            Ok(p) => p,
            Err(e) => return cold::refused(pool, e),
        };
        pool = &warmed;
        queued = waiting.elapsed();
    }
    // `timeouts.request_total`: queueing, connects and retries included (a gRPC call's
    // deadline instead, when it has one).
    let call = grpc::Call::of(req.headers(), arrived);
    let budget = grpc::Call::budget(call.as_ref(), arrived, pool.timeouts.request_total);
    // `limits:` a slot of the pool, or a wait in its queue, or 503.
    let admitted =
        match tokio::time::timeout_at(budget.deadline, queue::admit(&ctx.runtime, pool)).await {
            Ok(Ok(a)) => a,
            Ok(Err(refused)) => return refused,
            Err(_) => return queue::over_budget(pool),
        };
    queued += admitted.waited;
    let requeued;
    if let Some(fresh) = &admitted.fresh {
        requeued = fresh.clone();
        pool = &requeued;
    }

    let upgrade = websocket::is_upgrade(&req).then(|| websocket::Upgrade {
        client: hyper::upgrade::on(&mut req),
        tunnels: ctx.runtime.tunnels.clone(),
    });
    let h2_websocket = upgrade.is_some() && websocket::is_h2(&req);
    // Interim (1xx) responses go to HTTP/1.1 clients only.
    let interim = (req.version() == http::Version::HTTP_11).then_some(&ctx.interim);
    let (mut parts, body) = req.into_parts();
    let hash = match pool.algorithm {
        Algorithm::ConsistentHash => affinity::hash_key(&pool.hash_key, &parts, ctx.client.ip),
        _ => None,
    };
    let panic = pool.in_panic();
    // Before the rewrite: the sticky cookie is taken out of what the backend sees.
    let mut resolved = pool.affinity.as_ref().map_or(Resolved::default(), |a| {
        a.resolve(&mut parts.headers, ctx.client.ip, &pool.backends, panic)
    });
    // `learn_cookie`: the application's session, bound to its backend in the shared state.
    let learned = crate::state::learned::resolve(
        &ctx.shared.learned,
        pool,
        &parts.headers,
        &mut resolved,
        panic,
    )
    .await;
    let te_trailers = web.is_some()
        | headers::rewrite_request(
            &mut parts.headers,
            &ctx.client,
            authority.as_ref(),
            upgrade.is_some(),
        );
    client_cert::forward(&mut parts.headers, ctx.client_cert.get());
    if te_trailers {
        parts.extensions.insert(headers::TeTrailers);
    }
    if h2_websocket {
        websocket::h1_handshake(&mut parts);
    }
    if upgrade.is_some() {
        websocket::mark_upgrade(&mut parts.headers);
    }
    let https = client_https(&parts.headers, ctx);
    if ctx.normalize.policy.forward_original {
        // Routed on the normal form; the backend gets the path as the client wrote it.
        if let Some(normalize::Original(original)) = parts.extensions.remove() {
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = Some(original);
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
            }
        }
    }
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
    let mut plan = forward::Plan {
        hash,
        affinity: resolved,
        https,
        panic,
        upgrade,
        h2_websocket,
        learned,
        queued,
        budget,
        interim,
        grpc: call,
        progress: None,
        web_text: web.as_ref().is_some_and(|w| w.1 == grpc_web::Mode::Text),
        response_buffer: ctx.limits.response_buffer,
    };
    let mut log_bytes = parts
        .extensions
        .remove::<crate::upstream::client_body::RequestBytes>();
    if let Some(call) = call {
        // A call's stream that flows keeps the waits for the backend going (its head
        // without a deadline, and the gaps in its answer).
        let progress = crate::upstream::progress::Progress(
            log_bytes.get_or_insert_with(Default::default).0.clone(),
        );
        if call.deadline.is_none() {
            parts.extensions.insert(progress.clone());
        }
        plan.progress = Some(progress);
    }
    let mut body = crate::upstream::client_body::ClientBody::new(body, &ctx.limits)
        .counted(&pool.stats.request_bytes, log_bytes);
    if call.is_some() {
        // A client stream may pause: `timeouts.idle` bounds a call's silence instead.
        body = body.unpaced();
    }
    let events = &ctx.runtime.events;
    let mut resp = match through {
        Some(t) => cached::forward(t, parts, body, pool, plan, events).await,
        None => forward::forward(parts, body, pool, plan, events).await,
    };
    admitted.hold(&mut resp);
    match web {
        // autolb's own answer as a gRPC status first, then all of it as gRPC-Web.
        Some((cfg, mode, headers)) => {
            let resp = grpc::local_answer(resp, snapshot);
            grpc_web::response(resp, mode, &cfg, &headers)
        }
        None => resp,
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
