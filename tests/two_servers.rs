//! Two autolb servers in one process share no state: each builds its services at start-up
//! (per-IP rate limits of listeners and routes, connection counts, WebSocket tunnels, the
//! TLS store, the access log and alert queues, the shared-state services) instead of looking them up in process-wide registries by name. Before, a
//! listener `web` of the second server took its tokens from the first one's buckets and
//! counted the first one's connections.
//!
//! In-process on purpose (the only way to have two servers in one process); the backend is
//! a hyper server in this test.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use autolb::server::Server;

/// A server whose listener `web` has `listener_extra`, with `routes` (YAML list items).
async fn server(backend: SocketAddr, listener_extra: &str, routes: &str) -> Server {
    let yaml = common::config(
        1,
        listener_extra,
        &format!(
            "routes:\n{routes}pools:\n  web:\n    backends:\n{}",
            common::backend_list(&[backend], "")
        ),
    );
    let config = autolb::config::load_str(&yaml, Path::new("two_servers.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(config).await.expect("server starts");
    autolb::admin::start(&server, Default::default());
    server
}

async fn backend() -> SocketAddr {
    common::hyper_backend(|_req| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
    })
    .await
}

/// The first request passes and the second is refused (burst 1 per client IP), on `a`,
/// then again on `b`: `b` must not spend `a`'s tokens.
async fn each_limits_for_itself(a: SocketAddr, b: SocketAddr, path: &str) {
    assert_eq!(common::get(a, path).await.status, 200);
    assert_eq!(common::get(a, path).await.status, 429);
    assert_eq!(
        common::get(b, path).await.status,
        200,
        "the second server must not spend the first one's tokens"
    );
    assert_eq!(common::get(b, path).await.status, 429);
}

const LIMIT: &str = "rate_limit: { per_ip: 1/m, burst: 1 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_their_own_listener_rate_limits() {
    let backend = backend().await;
    let extra = format!(", {LIMIT}");
    let a = server(backend, &extra, "").await;
    let b = server(backend, &extra, "").await;
    each_limits_for_itself(a.listeners["web"], b.listeners["web"], "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_their_own_route_rate_limits() {
    let backend = backend().await;
    let routes = format!("  - {{ path_prefix: /limited, pool: web, {LIMIT} }}\n");
    let a = server(backend, "", &routes).await;
    let b = server(backend, "", &routes).await;
    each_limits_for_itself(a.listeners["web"], b.listeners["web"], "/limited").await;
    // Other paths are not limited.
    assert_eq!(common::get(a.listeners["web"], "/free").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_count_their_own_connections() {
    let backend = backend().await;
    let extra = ", limits: { max_connections: 1 }";
    let a = server(backend, extra, "").await;
    let b = server(backend, extra, "").await;
    // One connection open on a's `web` (answered, so admitted and counted)...
    let mut held = common::Client::connect(a.listeners["web"]).await;
    assert_eq!(held.get("/").await.status, 200);
    // ...leaves b's `web` free.
    let mut other = common::Client::connect(b.listeners["web"]).await;
    let r = other
        .try_get("/")
        .await
        .expect("the second server admits its first connection");
    assert_eq!(r.status, 200);
    assert_eq!(held.get("/").await.status, 200);
}

/// A WebSocket through `a` outlives `b`'s shutdown: before, the tunnels were one
/// process-wide set, and stopping `b` closed `a`'s WebSocket with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_server_leaves_the_other_ones_websockets_open() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let echo = common::echo("e1");
    let a = server(echo.addr, "", "").await;
    let b = server(echo.addr, "", "").await;
    let (mut ws, _) = common::ws_connect(a.listeners["web"], "/ws", &[]).await;
    assert_eq!(common::ws_text(&mut ws).await, "e1");
    b.shutdown(
        autolb::server::Drain::Stop,
        std::time::Duration::from_secs(2),
    )
    .await;
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(common::ws_text(&mut ws).await, "still here");
}

/// Two servers with an https listener of the same name and different certificates: each
/// serves its own. Before, the TLS store was one process-wide registry keyed by listener
/// name, and the second server's start replaced the first one's certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_serve_their_own_certificates() {
    use common::tls::{self as t, TestCa};
    let backend = backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("two servers CA");
    let first = ca.issue(&["a.test"]);
    let second = ca.issue(&["a.test"]);
    let mut servers = Vec::new();
    for (i, issued) in [&first, &second].into_iter().enumerate() {
        let pair = issued.write(dir.path(), &format!("s{i}"));
        let yaml = t::https_config(&[pair], "", "", "", &[backend]);
        let config = autolb::config::load_str(&yaml, Path::new("two_servers_tls.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let server = Server::start(config).await.expect("server starts");
        autolb::admin::start(&server, Default::default());
        servers.push(server);
    }
    let connector = t::connector(&ca, &[], false);
    for (server, issued) in servers.iter().zip([&first, &second]) {
        let stream = t::connect(server.listeners["secure"], "a.test", &connector)
            .await
            .expect("handshake");
        assert!(
            t::presented(&stream) == issued.der,
            "each server presents the certificate of its own config"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_write_their_own_access_logs() {
    let backend = backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let log = dir.path().join(format!("{name}.log"));
        let yaml = common::config(
            1,
            "",
            &format!(
                "access_log: {{ path: \"{}\" }}\npools:\n  web:\n    backends:\n{}",
                log.display(),
                common::backend_list(&[backend], "")
            ),
        );
        let config = autolb::config::load_str(&yaml, Path::new("two_servers_log.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let server = Server::start(config).await.expect("server starts");
        autolb::admin::start(&server, Default::default());
        servers.push((server, log));
    }
    for (server, _) in &servers {
        let path = format!("/from-{}", server.listeners["web"].port());
        assert_eq!(
            common::get(server.listeners["web"], &path).await.status,
            200
        );
    }
    // Each line lands in its own server's file, and only there.
    for (server, log) in &servers {
        let mine = format!("/from-{}", server.listeners["web"].port());
        let text = common::wait_until(10, "the access log line", || async {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.contains(&mine).then_some(text)
        })
        .await;
        assert_eq!(
            text.lines().count(),
            1,
            "{}: only its own server's request: {text}",
            log.display()
        );
    }
    // The metrics count each server's own lines.
    for (server, _) in &servers {
        let metrics = common::get(server.admin_addr, "/metrics").await.text();
        assert!(
            metrics.contains("autolb_access_log_lines_total{result=\"written\"} 1"),
            "{metrics}"
        );
    }
}
