//! The admin HTTP API on its own port: health, performance, load-balancer, scaling and
//! cluster status, Prometheus metrics, manual scaling and backend states. Every request
//! passes the Host guard; every POST the cross-site guard and the POST token; GETs the read
//! token when one is set. Every answer is JSON except `/metrics` and `/`; errors are
//! `{"error": ...}`.

mod auth;
mod backends;
mod cache;
mod config_view;
mod cross_site;
mod dashboard;
mod guard;
mod probe;
mod scaling;
mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::autoscale::Autoscaler;
use crate::runtime::Runtime;
use crate::server::reload::Trigger;

pub use auth::{MissingToken, Tokens};

/// What the admin API reads.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub runtime: Arc<Runtime>,
    pub listeners: Arc<crate::server::listeners::Listeners>,
    pub autoscaler: Arc<Autoscaler>,
    /// Bearer tokens: for every POST (`admin.token_env`; `None` on a loopback admin
    /// without it) and for reading (`admin.read_token_env`).
    pub tokens: auth::Tokens,
    pub reload: crate::server::reload::Handle,
    pub reload_state: Arc<std::sync::Mutex<crate::server::reload::ReloadState>>,
    /// Shared state (memory or Redis), the fleet registry and rate limits.
    pub shared: Arc<crate::state::Shared>,
    /// `autolb_acme_*` metrics, when a listener uses ACME.
    pub acme: Option<Arc<crate::acme::Acme>>,
    /// The https listeners' TLS state (`autolb_tls_*` metrics).
    pub tls: Arc<crate::tls::Store>,
    /// OCSP stapling (`autolb_ocsp_*` metrics).
    pub ocsp: Arc<crate::ocsp::Ocsp>,
    /// Anything but `Serving` from the moment a drain begins (`/health/ready` answers 503).
    pub draining: watch::Receiver<crate::server::Drain>,
}

/// Serve the admin API of a started server on its admin port, guarded by `tokens`
/// (`Tokens::from_env`, read before the server starts). The server stops it at its
/// shutdown, or earlier when a successor takes the port over.
pub fn start(server: &crate::server::Server, tokens: Tokens) {
    let services = server.services();
    warn_if_exposed(server.admin_addr, &tokens);
    let state = AdminState {
        runtime: services.runtime,
        listeners: server.running.clone(),
        autoscaler: server.autoscaler.clone(),
        tokens,
        reload: server.reload_handle.clone(),
        reload_state: server.reload_state.clone(),
        shared: services.shared,
        acme: services.acme,
        tls: services.tls,
        ocsp: server.ocsp(),
        draining: server.draining(),
    };
    server.serve_admin(move |listener, stop| serve(listener, state, stop));
}

/// Serve the admin API until `stop` (the end of a drain, or a successor taking over).
async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    tokio::spawn(track_peaks(state.runtime.clone(), stop.clone()));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Fold the pools' busiest seconds into the peaks more often than their one-minute windows
/// forget them, so that a peak counts even when nobody looked at the time.
async fn track_peaks(runtime: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(20));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let snap = runtime.snapshot();
        runtime.peaks.update(
            snap.pools
                .iter()
                .map(|p| (p.name.as_str(), &p.stats.window)),
            tokio::time::Instant::now(),
        );
    }
}

/// Warn at start when a non-loopback admin lets anyone who reaches it read the GET
/// endpoints that show pids, ports, backends and metrics (no `admin.read_token_env`).
fn warn_if_exposed(listen: std::net::SocketAddr, tokens: &Tokens) {
    if listen.ip().is_loopback() || tokens.read.is_some() {
        return;
    }
    let exposed: Vec<&str> = ENDPOINTS
        .iter()
        .filter(|(p, m)| *m == "GET" && !auth::PUBLIC.contains(p))
        .map(|(p, _)| *p)
        .collect();
    tracing::warn!(
        "admin: {listen} is not loopback and admin.read_token_env is not set: anyone who \
         reaches it can read {}; set read_token_env (or firewall the port)",
        exposed.join(", ")
    );
}

/// Every endpoint and the methods it takes.
const ENDPOINTS: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/health", "GET"),
    ("/health/live", "GET"),
    ("/health/ready", "GET"),
    ("/health/performance", "GET"),
    ("/loadbalancer/status", "GET"),
    ("/metrics", "GET"),
    ("/scaling/status", "GET"),
    ("/cluster/status", "GET"),
    ("/scaling/manual", "POST"),
    ("/config/reload", "POST"),
    ("/backends/state", "POST"),
    ("/cache/purge", "POST"),
    ("/redis/status", "GET"),
];

async fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if !guard::allowed(&req) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "host not allowed (DNS rebinding guard)",
        );
    }
    let path = req.uri().path().to_string();
    let Some(&(_, method)) = ENDPOINTS.iter().find(|(p, _)| *p == path) else {
        return error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"));
    };
    let allowed = match method {
        "GET" => req.method() == Method::GET || req.method() == Method::HEAD,
        _ => req.method() == Method::POST,
    };
    if !allowed {
        let allow = if method == "GET" { "GET, HEAD" } else { "POST" };
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method not allowed; use {allow}"),
        );
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    let authorized = if method == "POST" {
        check_post(&req, &path).and_then(|()| state.tokens.authorize_post(&req))
    } else {
        state.tokens.authorize_get(&req, &path)
    };
    if let Err(resp) = authorized {
        return *resp;
    }
    let rt = &state.runtime;
    match path.as_str() {
        "/" => dashboard::page(),
        "/health" => {
            let mut h = status::health(rt);
            if let Ok(r) = state.reload_state.lock() {
                h["config"]["last_reload"] = r.to_json()["last_reload"].clone();
            }
            h["shared_state"] = state.shared.health();
            json(StatusCode::OK, &h)
        }
        "/health/live" => probe::live(),
        "/health/ready" => probe::ready(state),
        "/health/performance" => json(
            StatusCode::OK,
            &status::performance(rt, &state.listeners.stats()),
        ),
        "/loadbalancer/status" => {
            let mut v = status::loadbalancer(rt, &state.listeners.stats());
            let reloads = state
                .reload_state
                .lock()
                .map_or(serde_json::Value::Null, |r| r.history_json());
            v["config"] = config_view::view(&rt.snapshot(), reloads);
            json(StatusCode::OK, &v)
        }
        "/scaling/status" => json(StatusCode::OK, &state.autoscaler.scaling_status()),
        "/cluster/status" => {
            let mut c = state.autoscaler.cluster_status();
            state.shared.fill_cluster_status(&mut c);
            json(StatusCode::OK, &c)
        }
        "/redis/status" => json(StatusCode::OK, &state.shared.redis_status()),
        "/scaling/manual" => scaling::manual(req, state).await,
        "/backends/state" => backends::set_state(req, state).await,
        "/cache/purge" => cache::purge(req, state).await,
        "/config/reload" => match state.reload.reload(Trigger::Admin).await {
            Some(o) => json(o.status(), &o.to_json()),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "autolb is shutting down"),
        },
        _ => {
            let given = crate::metrics::Given {
                listeners: state.listeners.counts(),
                autoscale: Some(state.autoscaler.counts(&rt.snapshot())),
            };
            let mut text = crate::metrics::render(rt, &given);
            state.tls.render_metrics(&mut text);
            state.ocsp.render_metrics(&mut text);
            text.push_str(&state.shared.metrics());
            if let Some(acme) = &state.acme {
                acme.render_metrics(&mut text);
            }
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}

/// The cross-site guard of a POST (logged: a refused one is a page trying its luck).
fn check_post<B>(req: &Request<B>, path: &str) -> Result<(), Box<Response<Full<Bytes>>>> {
    cross_site::check_post(req).map_err(|r| {
        if r.status == StatusCode::FORBIDDEN {
            let origin = req.headers().get(http::header::ORIGIN);
            tracing::warn!(
                path,
                ?origin,
                "admin: refused a cross-site POST: {}",
                r.message
            );
        }
        Box::new(error(r.status, &r.message))
    })
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
