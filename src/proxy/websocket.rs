//! WebSocket proxying: an `Upgrade: websocket` request goes to a backend like any request
//! (affinity, retries, timeouts); only when the backend answers 101 are both connections
//! taken over from hyper and joined by a `Tunnel`. Any other answer stays plain HTTP.
//!
//! Each tunnel counts in its backend's `websockets` (load for least_conn, status, metrics)
//! and closes with 1001 when the backend's drain is over, when it idles for
//! `timeouts.websocket_idle`, or when autolb shuts down.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{
    CONNECTION, CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::tunnel::{CloseReason, End, Tunnel};
use crate::runtime::tunnels::Tunnels;
use crate::runtime::Backend;

/// How long the two upgraded connections may take to be handed over after the 101.
const HANDOVER: Duration = Duration::from_secs(30);

/// A WebSocket upgrade asked for: the client's side (taken over after the backend's 101)
/// and the server's tunnels it joins.
pub struct Upgrade {
    pub client: OnUpgrade,
    pub tunnels: Arc<Tunnels>,
}

/// Is `header` a comma-separated list holding `token` (case-insensitive)?
fn has_token(headers: &HeaderMap, header: HeaderName, token: &str) -> bool {
    headers.get_all(header).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A request to open a WebSocket: an HTTP/1.1 `GET` asking to upgrade to it (other
/// upgrades are not proxied: their Upgrade header is stripped and the request served as
/// plain HTTP), or an HTTP/2 extended CONNECT for it (`is_h2`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    is_h2(req)
        || (req.version() == Version::HTTP_11
            && req.method() == Method::GET
            && has_token(req.headers(), CONNECTION, "upgrade")
            && has_token(req.headers(), UPGRADE, "websocket"))
}

/// RFC 8441: a WebSocket over an HTTP/2 stream, asked for with an extended CONNECT whose
/// `:protocol` is `websocket` (the listener's SETTINGS_ENABLE_CONNECT_PROTOCOL allows it).
/// Backends get the HTTP/1.1 handshake (`h1_handshake`) and the client a 200 (`h2_accepted`).
pub fn is_h2<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// An RFC 8441 request made the HTTP/1.1 handshake backends speak: `GET` with `Upgrade:
/// websocket`, a fresh `Sec-WebSocket-Key` (the client's stream has none: HTTP/2 needs no
/// key) and version 13; `Sec-WebSocket-Protocol` and `-Extensions` pass as the client sent
/// them. The caller sets `Connection: upgrade` (`mark_upgrade`) after its header rewrite.
pub fn h1_handshake(parts: &mut http::request::Parts) {
    parts.method = Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    let h = &mut parts.headers;
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    if let Ok(key) = HeaderValue::from_str(&key) {
        h.insert(SEC_WEBSOCKET_KEY, key);
    }
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
}

/// A backend's 101 as an RFC 8441 client reads it: 200 on the stream, without the
/// HTTP/1.1 handshake's connection-level headers (HTTP/2 forbids them).
pub fn h2_accepted(head: &mut http::response::Parts) {
    head.status = http::StatusCode::OK;
    for name in [CONNECTION, UPGRADE, SEC_WEBSOCKET_ACCEPT, CONTENT_LENGTH] {
        head.headers.remove(name);
    }
}

/// The hop-by-hop header an upgrade needs again after the headers were rewritten.
pub fn mark_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Counts one WebSocket in its backend and its server from the 101 until the tunnel ends.
struct Open(Arc<Backend>, Arc<Tunnels>);

impl Open {
    fn new(backend: Arc<Backend>, tunnels: Arc<Tunnels>) -> Open {
        backend.stats.websocket(true);
        tunnels.opened();
        Open(backend, tunnels)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.stats.websocket(false);
        self.1.closed_one();
    }
}

/// After a 101: count the WebSocket and run its tunnel on this worker.
pub(crate) fn spawn(
    upgrade: Upgrade,
    backend_side: OnUpgrade,
    backend: Arc<Backend>,
    pool: String,
    idle: Duration,
) {
    let open = Open::new(backend, upgrade.tunnels);
    tokio::spawn(run(upgrade.client, backend_side, open, pool, idle));
}

async fn run(client: OnUpgrade, backend_side: OnUpgrade, open: Open, pool: String, idle: Duration) {
    let backend = &open.0;
    let tunnels = &open.1;
    let (client, upstream) = match tokio::time::timeout(
        HANDOVER,
        futures_util::future::join(client, backend_side),
    )
    .await
    {
        Ok((Ok(c), Ok(b))) => (c, b),
        Ok((c, b)) => {
            tracing::debug!(
                pool = %pool,
                backend = %backend.address,
                client_error = ?c.err(),
                backend_error = ?b.err(),
                "WebSocket handover failed"
            );
            return;
        }
        Err(_) => {
            tracing::warn!(pool = %pool, backend = %backend.address, "WebSocket handover timed out");
            return;
        }
    };
    let mut tunnel = Tunnel::new(TokioIo::new(client), TokioIo::new(upstream), idle);
    // Registered before the first poll: a notify_waiters() from now on reaches this tunnel.
    let stats = backend.stats.clone();
    let drained = stats.close_websockets.notified();
    let shutdown = tunnels.closed();
    tokio::pin!(drained, shutdown);
    drained.as_mut().enable();
    shutdown.as_mut().enable();
    if tunnels.shutting_down() {
        tunnel.close(CloseReason::Shutdown);
    }
    tracing::debug!(pool = %pool, backend = %backend.address, "WebSocket open");
    let end = poll_fn(|cx| {
        if !tunnel.is_closing() {
            if drained.as_mut().poll(cx).is_ready() {
                tracing::debug!(pool = %pool, backend = %backend.address, "backend drained: closing WebSocket with 1001");
                tunnel.close(CloseReason::Drain);
            } else if shutdown.as_mut().poll(cx).is_ready() {
                tunnel.close(CloseReason::Shutdown);
            }
        }
        tunnel.poll_run(cx)
    })
    .await;
    let (up, down) = tunnel.bytes();
    match end {
        End::Closed => {
            tracing::debug!(pool = %pool, backend = %backend.address, up, down, "WebSocket closed")
        }
        End::Abandoned => tracing::debug!(
            pool = %pool,
            backend = %backend.address,
            up,
            down,
            "WebSocket peer did not finish closing: connections dropped"
        ),
        End::Error(e) => tracing::debug!(
            pool = %pool,
            backend = %backend.address,
            up,
            down,
            error = %e,
            "WebSocket ended with an error"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/ws")
            .version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn only_http11_get_websocket_upgrades() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_upgrade(&req("GET", Version::HTTP_11, &ws)));
        assert!(!is_upgrade(&req("POST", Version::HTTP_11, &ws)));
        assert!(!is_upgrade(&req("GET", Version::HTTP_10, &ws)));
        assert!(!is_upgrade(&req("GET", Version::HTTP_2, &ws)));
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert!(!is_upgrade(&req("GET", Version::HTTP_11, &h2c)));
        let no_conn = [("upgrade", "websocket")];
        assert!(!is_upgrade(&req("GET", Version::HTTP_11, &no_conn)));
    }
}
