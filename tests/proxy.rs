//! The data plane through the real listener: header rewriting, hop-by-hop stripping,
//! 502/503/504, safe retries and routing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, Autolb, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn single_pool(backends: &[SocketAddr], pool_extra: &str, listener_extra: &str) -> String {
    let list = common::backend_list(backends, "");
    common::config(
        1,
        listener_extra,
        &format!("pools:\n  web:\n{pool_extra}    backends:\n{list}"),
    )
}

/// A port with nothing listening on it.
fn dead_addr() -> SocketAddr {
    // Below the ephemeral range: no other bind or connection of the tests takes it.
    std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

#[tokio::test]
async fn forwarding_headers_are_set_and_spoofed_values_replaced() {
    let e = echo("e");
    let lb = Autolb::start(&single_pool(&[e.addr], "", ""));
    let mut c = Client::connect(lb.addr("web")).await;
    let r = c
        .get_with(
            "/echo?x=1",
            &[
                ("host", "shop.example:8080"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=6.6.6.6"),
                ("connection", "x-forwarded-for, x-drop-me, forwarded"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("x-keep-me", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(j["path"], "/echo?x=1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example:8080");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;host=\"shop.example:8080\";proto=http"
    );
    assert_eq!(h["host"], "shop.example:8080");
    assert_eq!(h["x-keep-me"], "yes");
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
}

#[tokio::test]
async fn trusted_proxies_keep_and_extend_the_chain() {
    let e = echo("e");
    let lb = Autolb::start(&single_pool(
        &[e.addr],
        "",
        ", trusted_proxies: [\"127.0.0.0/8\"]",
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    let r = c
        .get_with(
            "/echo",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=203.0.113.7;proto=https"),
            ],
        )
        .await;
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    let fwd = h["forwarded"].as_str().expect("forwarded");
    assert!(
        fwd.starts_with("for=203.0.113.7;proto=https, for=127.0.0.1"),
        "{fwd}"
    );
}

/// A backend that answers with hop-by-hop headers it should not leak.
async fn chatty_backend() -> SocketAddr {
    common::raw_backend(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = s.read(&mut buf).await else { return };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-internal\r\n\
                            X-Internal: secret\r\nKeep-Alive: timeout=5\r\nTrailer: x-t\r\n\
                            Upgrade: h2c\r\nX-Public: shown\r\n\r\nok";
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let backend = chatty_backend().await;
    let lb = Autolb::start(&single_pool(&[backend], "", ""));
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"ok");
        assert_eq!(r.headers["x-public"], "shown");
        for gone in ["x-internal", "keep-alive", "trailer", "upgrade"] {
            assert!(
                r.headers.get(gone).is_none(),
                "{gone} leaked: {:?}",
                r.headers
            );
        }
    }
}

#[tokio::test]
async fn a_dead_backend_is_retried_elsewhere_and_502_when_all_are_dead() {
    let e = echo("alive");
    let dead = dead_addr();
    let lb = Autolb::start(&single_pool(
        &[dead, e.addr],
        "    balance: round_robin\n",
        "",
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..20 {
        let r = c.get("/").await;
        assert_eq!((r.status, r.text()), (200, "alive".to_string()));
    }

    let lb = Autolb::start(&single_pool(&[dead_addr(), dead_addr()], "", ""));
    let r = common::get(lb.addr("web"), "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "backend failed");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(
        lb.proc.log_shows("502", Duration::from_secs(10)),
        "{}",
        lb.proc.log()
    );
}

#[tokio::test]
async fn no_usable_backend_is_503() {
    let e = echo("e");
    let list = common::backend_list(&[e.addr], ", disabled: true");
    let lb = Autolb::start(&common::config(
        1,
        "",
        &format!("pools:\n  web:\n    backends:\n{list}"),
    ));
    let r = common::get(lb.addr("web"), "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["pool"], "web");
    assert!(
        lb.proc.log_shows("503", Duration::from_secs(10)),
        "{}",
        lb.proc.log()
    );
}

#[tokio::test]
async fn a_slow_backend_is_504_after_the_response_timeout() {
    let e = echo("e");
    let lb = Autolb::start(&single_pool(
        &[e.addr],
        "    retries: 0\n    timeouts: { connect: 1s, response: 300ms, idle: 10s }\n",
        "",
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    let r = c.get("/delay/5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "backend timed out");
    // The client connection is still usable, and a fast request succeeds.
    let r = c.get("/delay/10").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn routes_pick_pools_by_host_and_path_prefix() {
    let (web, api, admin) = (echo("web"), echo("api"), echo("adm"));
    let rest = format!(
        "routes:
  - {{ host: api.example.com, path_prefix: /v1, pool: api }}
  - {{ host: \"*.admin.example.com\", pool: adm }}
pools:
  web: {{ backends: [ {{ address: \"{}\" }} ] }}
  api: {{ backends: [ {{ address: \"{}\" }} ] }}
  adm: {{ backends: [ {{ address: \"{}\" }} ] }}
",
        web.addr, api.addr, admin.addr
    );
    let lb = Autolb::start(&common::config(1, "", &rest));
    let mut c = Client::connect(lb.addr("web")).await;
    let cases = [
        ("api.example.com", "/v1/users", "api"),
        ("API.example.com:8080", "/v1", "api"),
        ("api.example.com", "/v2/users", "web"),
        ("other.example.com", "/v1/users", "web"),
        ("eu.admin.example.com", "/", "adm"),
        ("admin.example.com", "/", "web"),
    ];
    for (host, path, want) in cases {
        let r = c.get_with(path, &[("host", host)]).await;
        assert_eq!(r.headers["x-backend"], want, "{host}{path}");
    }
}

/// A backend that sends headers and part of the body, then goes silent.
async fn stalling_backend() -> SocketAddr {
    common::raw_backend(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
}

#[tokio::test]
async fn a_backend_silent_mid_body_is_cut_after_the_idle_timeout() {
    let backend = stalling_backend().await;
    let lb = Autolb::start(&single_pool(
        &[backend],
        "    timeouts: { connect: 1s, response: 5s, idle: 300ms }\n",
        "",
    ));
    let stream = tokio::net::TcpStream::connect(lb.addr("web"))
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            http::Request::get("/")
                .header("host", "x")
                .body(Default::default())
                .expect("req"),
        )
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("autolb ends the stalled response instead of hanging");
    assert!(body.is_err(), "a truncated body must not look complete");
    assert!(
        lb.proc.log_shows("went silent", Duration::from_secs(10)),
        "{}",
        lb.proc.log()
    );
}

/// A keep-alive backend counting the TCP connections it accepted.
async fn counting_backend(conns: Arc<AtomicUsize>) -> SocketAddr {
    common::raw_backend(move |stream| {
        conns.fetch_add(1, Ordering::SeqCst);
        async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let conns = Arc::new(AtomicUsize::new(0));
    let backend = counting_backend(conns.clone()).await;
    let lb = Autolb::start(&single_pool(&[backend], "", ""));
    // Sequential requests, even over fresh client connections, reuse one backend connection.
    for _ in 0..20 {
        let mut c = Client::connect(lb.addr("web")).await;
        for _ in 0..5 {
            assert_eq!(c.get("/").await.status, 200);
        }
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    assert_eq!(status["pools"][0]["backends"][0]["idle_connections"], 1);
}

#[tokio::test]
async fn idle_client_connections_are_closed_after_the_listener_idle_timeout() {
    let e = echo("e");
    let lb = Autolb::start(&single_pool(&[e.addr], "", ", idle_timeout: 300ms"));
    let mut s = tokio::net::TcpStream::connect(lb.addr("web"))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the answer, then wait for autolb to close the idle connection (EOF).
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "autolb kept an idle connection open");
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
