//! Orchestrator probes through the real program: `/health/live` answers 200 while autolb
//! runs, drain included; `/health/ready` answers 503 until a pool has a ready backend
//! (unless `admin.ready_requires_backend: false`), stays 200 when a reload is refused for
//! a port it cannot bind, and answers 503 from the moment a drain begins (SIGTERM), while
//! the in-flight requests still finish and the admin port still answers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{echo, get, wait_until, Autolb, Client};

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    // Below the ephemeral range: no other bind or connection of the tests takes it.
    std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

fn yaml(admin_extra: &str, backend: SocketAddr, extra_listener: &str) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\"{admin_extra} }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
{extra_listener}pools:
  web:
    health_check: {{ type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    backends: [ {{ address: \"{backend}\" }} ]
"
    )
}

async fn ready(admin: SocketAddr) -> (u16, serde_json::Value) {
    let r = get(admin, "/health/ready").await;
    (r.status, r.json())
}

async fn reload(admin: SocketAddr) -> u16 {
    let mut c = Client::connect(admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    c.request(req).await.status
}

#[tokio::test]
async fn ready_needs_a_ready_backend_and_every_listener_bound() {
    let lb = Autolb::start(&yaml("", dead_address(), ""));
    let (status, body) = wait_until(30, "not ready: no ready backend", || async {
        let (s, b) = ready(lb.admin).await;
        (s == 503 && b["checks"]["backends"]["ok"] == false).then_some((s, b))
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reasons"][0], "no pool has a ready backend");
    assert_eq!(body["checks"]["listeners"]["ok"], true);
    assert_eq!(get(lb.admin, "/health/live").await.status, 200);

    // A live backend: ready.
    let e = echo("e");
    std::fs::write(&lb.config, yaml("", e.addr, "")).expect("write");
    assert_eq!(reload(lb.admin).await, 200);
    let body = wait_until(30, "ready", || async {
        let (s, b) = ready(lb.admin).await;
        (s == 200).then_some(b)
    })
    .await;
    assert_eq!(body["status"], "ready");
    assert_eq!(
        body["checks"]["backends"]["pools_with_ready_backend"][0],
        "web"
    );

    // A reload adding a listener whose port another socket holds is refused, and the
    // running listeners stay bound: still ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr");
    let extra = format!("  - {{ name: extra, listen: \"{port}\", protocol: http, pool: web }}\n");
    std::fs::write(&lb.config, yaml("", e.addr, &extra)).expect("write");
    assert_eq!(reload(lb.admin).await, 409);
    let (status, body) = ready(lb.admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"]["listeners"]["not_bound"],
        serde_json::json!([])
    );
    drop(taken);
}

#[tokio::test]
async fn ready_without_backends_when_configured_so() {
    let lb = Autolb::start(&yaml(", ready_requires_backend: false", dead_address(), ""));
    // Once the pool is known to have no ready backend, ready still says 200.
    wait_until(30, "the backend to be down", || async {
        let h = get(lb.admin, "/health").await.json();
        (h["pools"][0]["ready"] == 0 && h["status"] == "degraded").then_some(())
    })
    .await;
    let (status, body) = ready(lb.admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["backends"]["required"], false);
}

#[tokio::test]
async fn a_drain_answers_503_at_once_while_in_flight_requests_finish() {
    // A backend that holds `/hold` until the test releases it.
    let arrived = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (a, r) = (arrived.clone(), release.clone());
    let backend = common::hyper_backend(move |req: http::Request<hyper::body::Incoming>| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            if req.uri().path() == "/hold" {
                a.fetch_add(1, Ordering::SeqCst);
                let _ = r.acquire().await.map(|p| p.forget());
            }
            http::Response::new(Full::new(Bytes::from_static(b"done")))
        }
    })
    .await;
    let lb = Autolb::start(&format!(
        "shutdown_grace: 60s\n{}",
        common::config(
            1,
            "",
            &format!(
                "pools:\n  web:\n    backends:\n{}",
                common::backend_list(&[backend], "")
            )
        )
    ));
    let addr = lb.addr("web");
    assert_eq!(ready(lb.admin).await.0, 200);
    let in_flight = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    wait_until(30, "the request at the backend", || async {
        (arrived.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    unsafe { libc::kill(lb.proc.pid() as i32, libc::SIGTERM) };
    // The admin port keeps answering: 503 as soon as the drain began.
    let body = wait_until(30, "ready to answer 503", || async {
        let mut c = match tokio::net::TcpStream::connect(lb.admin).await {
            Ok(s) => s,
            Err(e) => panic!("the admin port refused during the drain: {e}"),
        };
        c.write_all(b"GET /health/ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.starts_with("HTTP/1.1 503").then_some(text)
    })
    .await;
    assert!(body.contains("\"draining\""), "{body}");
    assert_eq!(get(lb.admin, "/health/live").await.status, 200);
    // The listener no longer accepts; the request in flight is still being served.
    wait_until(30, "the listener to refuse", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(!in_flight.is_finished());
    assert_eq!(ready(lb.admin).await.0, 503);

    release.add_permits(1);
    let answer = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("answer within 30s")
        .expect("client");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    let status = tokio::task::spawn_blocking(move || {
        let mut lb = lb;
        lb.proc.child.wait().expect("wait")
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(0));
}
