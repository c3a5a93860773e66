//! gRPC through autolb, what the load balancer adds: its own answers to calls as gRPC
//! statuses (HTTP 200, `grpc-status`, `grpc-message`), the calls of one client connection
//! balanced one by one (least_conn counting open streams), and request trailers.

mod common;
mod grpc_support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{Code, Request};

use common::{backend_list, Autolb};
use grpc_support::{msg, Client, Msg};

fn start(backends: &[std::net::SocketAddr], pool_extra: &str, rest: &str) -> Autolb {
    let list = backend_list(backends, "");
    Autolb::start(&common::config(
        2,
        ", h2c: true",
        &format!("{rest}pools:\n  web:\n    protocol: h2\n{pool_extra}    backends:\n{list}"),
    ))
}

/// A port nothing listens on.
fn dead_port() -> std::net::SocketAddr {
    // Below the ephemeral range: no other bind or connection of the tests takes it.
    std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autolb_answers_calls_with_grpc_statuses() {
    let server = grpc_support::server("s1").await;
    let lb = start(
        &[server.addr, dead_port()],
        "    balance: round_robin\n    retries: 0\n",
        "routes:\n  - { path_prefix: /test.Echo/Stream, pool: web, \
         rate_limit: { per_ip: 1/m, burst: 1 } }\n",
    );
    let addr = lb.addr("web");

    // The dead backend's turn comes within two calls: UNAVAILABLE, as a gRPC status.
    let mut unavailable = None;
    for _ in 0..2 {
        let r = grpc_support::raw_call(addr, "/test.Echo/Unary", &msg("x"), &[]).await;
        if r.grpc_status().as_deref() == Some("14") {
            unavailable = Some(r);
        }
    }
    let r = unavailable.expect("a call to the dead backend");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert_eq!(r.grpc_message().as_deref(), Some("backend failed"), "{r:?}");
    assert!(
        r.body.is_empty() && r.trailers.is_none(),
        "Trailers-Only: {r:?}"
    );

    // A tonic client sees the status and autolb's message.
    let mut c = Client::connect(addr).await;
    let mut seen = HashSet::new();
    for _ in 0..2 {
        match c.unary(Request::new(msg("x"))).await {
            Ok(resp) => {
                seen.insert("ok".to_string());
                assert_eq!(resp.get_ref().text, "echo:x");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "backend failed");
                seen.insert("unavailable".to_string());
            }
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The route's rate limit: the second call is RESOURCE_EXHAUSTED, with Retry-After.
    let m = Msg {
        text: "s".into(),
        count: 1,
        delay_ms: 0,
    };
    let mut results = Vec::new();
    for _ in 0..2 {
        results.push(grpc_support::raw_call(addr, "/test.Echo/Stream", &m, &[]).await);
    }
    assert_eq!(
        results[0].grpc_status().as_deref(),
        Some("0"),
        "{:?}",
        results[0]
    );
    let limited = &results[1];
    assert_eq!(limited.status, 200, "{limited:?}");
    assert_eq!(limited.grpc_status().as_deref(), Some("8"), "{limited:?}");
    assert_eq!(
        limited.grpc_message().as_deref(),
        Some("rate limit exceeded"),
        "{limited:?}"
    );
    assert!(limited.headers.contains_key("retry-after"), "{limited:?}");
    let status = c.stream(Request::new(m)).await.expect_err("rate limited");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A backend's own error status is the backend's, untouched.
    let status = c.unary(Request::new(msg("fail"))).await;
    if let Err(s) = status {
        if s.code() != Code::Unavailable {
            assert_eq!(s.code(), Code::NotFound, "{s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_connection_spread_over_the_backends() {
    let s1 = grpc_support::server("s1").await;
    let s2 = grpc_support::server("s2").await;
    let s3 = grpc_support::server("s3").await;
    let lb = start(
        &[s1.addr, s2.addr, s3.addr],
        "    balance: least_conn\n",
        "",
    );
    // One client connection: three open bidirectional calls go to three backends (each
    // open stream counts for least_conn), then unary calls reach every backend too.
    let mut c = Client::connect(lb.addr("web")).await;
    let mut open = Vec::new();
    let mut servers = HashSet::new();
    for i in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        tx.send(msg(&i.to_string())).await.expect("send");
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = c.chat(Request::new(outbound)).await.expect("chat");
        let server = resp.metadata().get("x-server").expect("x-server").clone();
        let mut answers = resp.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("an answer")
            .expect("message")
            .expect("some");
        assert_eq!(first.text, format!("re:{i}"));
        servers.insert(server.to_str().expect("ascii").to_owned());
        open.push((tx, answers));
    }
    assert_eq!(servers.len(), 3, "open streams on {servers:?}");
    drop(open);
    let mut unary = HashSet::new();
    for _ in 0..30 {
        let resp = c.unary(Request::new(msg("u"))).await.expect("unary");
        let s = resp.metadata().get("x-server").expect("x-server");
        unary.insert(s.to_str().expect("ascii").to_owned());
        if unary.len() == 3 {
            break;
        }
    }
    assert_eq!(unary.len(), 3, "unary calls on {unary:?}");
}

/// An HTTP/2 backend that answers with the trailers of the request it read, as headers.
async fn trailer_echo_backend() -> std::net::SocketAddr {
    common::raw_backend(|stream| async move {
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let collected = req.into_body().collect().await?;
                let mut resp = http::Response::builder().header("content-type", "application/grpc");
                if let Some(t) = collected.trailers() {
                    for (k, v) in t {
                        resp = resp.header(format!("x-got-{k}"), v);
                    }
                }
                let body = http_body_util::Full::new(collected.to_bytes());
                Ok::<_, hyper::Error>(resp.body(body).expect("response"))
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_the_backend() {
    let backend = trailer_echo_backend().await;
    let lb = start(&[backend], "", "");
    let stream = tokio::net::TcpStream::connect(lb.addr("web"))
        .await
        .expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().expect("value"));
    let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"payload"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let req = http::Request::post("http://t.test/x")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), tx.send_request(req))
        .await
        .expect("an answer within 20 s")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-got-x-checksum"], "abc123");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "payload");
}

/// Backend `i`'s `health` in the admin status, once it is `want` (within 20 s).
async fn wait_health(lb: &Autolb, i: usize, want: &str) -> serde_json::Value {
    common::wait_until(20, &format!("backend {i} {want}"), || async move {
        let s = common::get(lb.admin, "/loadbalancer/status").await.json();
        let b = s["pools"][0]["backends"][i].clone();
        (b["health"] == want).then_some(b)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_the_serving_status() {
    let s1 = grpc_support::server("s1").await;
    let s2 = grpc_support::server("s2").await;
    let lb = start(
        &[s1.addr, s2.addr],
        "    balance: round_robin\n    health_check: { type: grpc, interval: 100ms, \
         timeout: 100ms, rise: 1, fall: 1 }\n",
        "",
    );
    wait_health(&lb, 0, "up").await;
    wait_health(&lb, 1, "up").await;

    // s2 says NOT_SERVING for the whole server (service ""): down, calls go to s1 only.
    s2.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    wait_health(&lb, 1, "down").await;
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..4 {
        let resp = c.unary(Request::new(msg("h"))).await.expect("unary");
        assert_eq!(resp.metadata().get("x-server").expect("x-server"), "s1");
    }
    s2.health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    wait_health(&lb, 1, "up").await;
    drop(lb);

    // `service:` asks about one service: unknown to the server (NOT_FOUND), then SERVING.
    let lb = start(
        &[s1.addr],
        "    health_check: { type: grpc, service: test.Echo, interval: 100ms, \
         timeout: 100ms, rise: 1, fall: 1 }\n",
        "",
    );
    wait_health(&lb, 0, "down").await;
    s1.health.set_serving::<grpc_support::EchoServer>().await;
    wait_health(&lb, 0, "up").await;
    s1.health
        .set_not_serving::<grpc_support::EchoServer>()
        .await;
    wait_health(&lb, 0, "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_statuses_are_counted_and_logged() {
    let server = grpc_support::server("s1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let lb = start(
        &[server.addr],
        "",
        &format!(
            "access_log: {{ path: {log:?} }}\nroutes:\n  - {{ path_prefix: /test.Echo/Collect, \
             pool: web, rate_limit: {{ per_ip: 1/m, burst: 1 }} }}\n"
        ),
    );
    let mut c = Client::connect(lb.addr("web")).await;
    // OK twice; NOT_FOUND (Trailers-Only from the backend); ABORTED after messages (in
    // trailers); RESOURCE_EXHAUSTED from autolb (the route's rate limit).
    c.unary(Request::new(msg("a"))).await.expect("ok");
    c.unary(Request::new(msg("b"))).await.expect("ok");
    c.unary(Request::new(msg("fail")))
        .await
        .expect_err("not found");
    let m = Msg {
        text: "fail".into(),
        count: 1,
        delay_ms: 0,
    };
    let mut s = c
        .stream(Request::new(m))
        .await
        .expect("stream")
        .into_inner();
    while s.message().await.is_ok_and(|m| m.is_some()) {}
    let one = || tokio_stream::iter([msg("x")]);
    c.collect(Request::new(one())).await.expect("first collect");
    let e = c.collect(Request::new(one())).await.expect_err("limited");
    assert_eq!(e.code(), Code::ResourceExhausted);

    let want = [("0", 3), ("5", 1), ("10", 1), ("8", 1)];
    let metrics = common::wait_until(20, "the calls counted", || async {
        let text = common::get(lb.admin, "/metrics").await.text();
        let all = want.iter().all(|(code, n)| {
            text.contains(&format!(
                "autolb_grpc_requests_total{{pool=\"web\",grpc_status=\"{code}\"}} {n}\n"
            ))
        });
        all.then_some(text)
    })
    .await;
    assert!(
        !metrics.contains("grpc_status=\"14\""),
        "nothing else counted"
    );

    // The access log: one line per call, with its grpc_status.
    let lines = common::wait_until(20, "six access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        async move { (lines.len() >= 6).then_some(lines) }
    })
    .await;
    let statuses: Vec<(String, serde_json::Value)> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap_or("").to_owned(),
                l["grpc_status"].clone(),
            )
        })
        .collect();
    let expect = [
        ("/test.Echo/Unary", 0),
        ("/test.Echo/Unary", 0),
        ("/test.Echo/Unary", 5),
        ("/test.Echo/Stream", 10),
        ("/test.Echo/Collect", 0),
        ("/test.Echo/Collect", 8),
    ];
    for (path, code) in expect {
        assert!(
            statuses
                .iter()
                .any(|(p, s)| p.ends_with(path) && *s == code),
            "{path} {code} in {statuses:?}"
        );
    }
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answered_unavailable_go_to_another_backend() {
    let down = grpc_support::server("down").await;
    let up = grpc_support::server("up").await;
    let lb = start(
        &[down.addr, up.addr],
        "    balance: round_robin\n    retries: 1\n    retry_on: [unavailable]\n",
        "",
    );
    let mut c = Client::connect(lb.addr("web")).await;
    for i in 0..6 {
        let resp = c
            .unary(Request::new(msg(&i.to_string())))
            .await
            .expect("retried");
        assert_eq!(resp.metadata().get("x-server").expect("x-server"), "up");
        // A client stream whose body ended before the answer is resent whole.
        let texts = tokio_stream::iter([msg("a"), msg("b")]);
        let resp = c.collect(Request::new(texts)).await.expect("retried");
        assert_eq!(resp.get_ref().text, "a+b");
    }
    assert!(down.calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let metrics = common::get(lb.admin, "/metrics").await.text();
    assert!(
        !metrics.contains("autolb_retries_total{pool=\"web\",reason=\"status\"} 0\n"),
        "{metrics}"
    );

    // Without `unavailable` in retry_on, the backend's status reaches the client.
    let lb = start(
        &[down.addr, up.addr],
        "    balance: round_robin\n    retries: 1\n",
        "",
    );
    let mut c = Client::connect(lb.addr("web")).await;
    let mut statuses = HashSet::new();
    for _ in 0..4 {
        match c.unary(Request::new(msg("x"))).await {
            Ok(_) => statuses.insert("ok".to_string()),
            Err(s) => {
                assert_eq!((s.code(), s.message()), (Code::Unavailable, "going away"));
                statuses.insert("unavailable".to_string())
            }
        };
    }
    assert_eq!(statuses.len(), 2, "{statuses:?}");
}
