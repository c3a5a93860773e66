//! The admin HTTP API on its own port: health, performance, load-balancer status and
//! Prometheus metrics. Every answer is JSON except `/metrics`; errors are `{"error": ...}`.

mod status;

use std::collections::BTreeMap;
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

use crate::runtime::Runtime;
use crate::server::ListenerStats;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    pub runtime: Arc<Runtime>,
    pub listeners: Arc<BTreeMap<String, Arc<ListenerStats>>>,
}

/// Serve the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
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
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/health" | "/health/performance" | "/loadbalancer/status" | "/metrics"
    );
    if !known {
        return error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use GET",
        );
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let rt = &state.runtime;
    match path {
        "/health" => json(StatusCode::OK, &status::health(rt)),
        "/health/performance" => json(StatusCode::OK, &status::performance(rt, &state.listeners)),
        "/loadbalancer/status" => json(StatusCode::OK, &status::loadbalancer(rt, &state.listeners)),
        _ => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render(
                rt,
                &state.listeners,
            ))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
