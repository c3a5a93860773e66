//! Failures users must not see: a backend killed or frozen under load, safe retries only,
//! and a graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, Autolb, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pool_yaml(addrs: &[SocketAddr], pool_extra: &str) -> String {
    let list = common::backend_list(addrs, "");
    common::config(
        2,
        "",
        &format!("pools:\n  web:\n    balance: round_robin\n{pool_extra}    backends:\n{list}"),
    )
}

/// `workers` clients sending `total` GETs between them; returns the non-200 answers and the
/// number of requests done when `midway` fired (after half of them).
async fn load<F: FnOnce() + Send + 'static>(
    addr: SocketAddr,
    workers: usize,
    total: usize,
    midway: F,
) -> Vec<String> {
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let midway = Arc::new(std::sync::Mutex::new(Some(midway)));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (done, errors, midway) = (done.clone(), errors.clone(), midway.clone());
        let share = total / workers + usize::from(w < total % workers);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            for _ in 0..share {
                let r = client.get("/").await;
                if r.status != 200 {
                    errors
                        .lock()
                        .expect("lock")
                        .push(format!("{} {}", r.status, r.text()));
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == total / 2 {
                    if let Some(f) = midway.lock().expect("lock").take() {
                        f();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let e = errors.lock().expect("lock").clone();
    e
}

#[tokio::test]
async fn killing_a_backend_under_load_loses_no_request() {
    let (a, b, mut c) = (echo("a"), echo("b"), echo("c"));
    let lb = Autolb::start(&pool_yaml(
        &[a.addr, b.addr, c.addr],
        "    retries: 2\n    outlier: { consecutive_failures: 3, ejection: 30s }\n",
    ));
    let pid = c.proc.pid();
    let errors = load(lb.addr("web"), 8, 3000, move || unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    })
    .await;
    let _ = c.proc.child.wait();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    let dead = &status["pools"][0]["backends"][2];
    assert!(dead["failures"].as_u64().expect("failures") >= 1, "{dead}");
}

#[tokio::test]
async fn a_frozen_backend_is_ejected_and_requests_keep_succeeding() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let lb = Autolb::start(&pool_yaml(
        &[a.addr, b.addr, c.addr],
        "    retries: 2\n    timeouts: { connect: 1s, response: 400ms, idle: 10s }\n    \
         outlier: { consecutive_failures: 2, ejection: 60s }\n",
    ));
    let pid = c.proc.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut client = Client::connect(lb.addr("web")).await;
    let mut retried = 0;
    for _ in 0..60 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(r.text(), "c");
        if r.headers.contains_key("x-autolb-tries") {
            retried += 1;
        }
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Only the requests that met the frozen backend before its ejection (two timeouts)
    // needed a second try; a noisy machine may add one or two slow answers, not more.
    assert!(
        (2..=4).contains(&retried),
        "{retried} requests were retried"
    );
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    let frozen = &status["pools"][0]["backends"][2];
    assert_eq!(frozen["health"], "ejected", "{frozen}");
    let events = status["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["event"] == "ejected"), "{events:?}");
}

/// A backend that reads a whole request (head and Content-Length body), counts it, and
/// closes the connection without answering, as a crash after receiving would.
async fn swallowing_backend(arrivals: Arc<AtomicUsize>) -> SocketAddr {
    common::raw_backend(move |mut s| {
        let arrivals = arrivals.clone();
        async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + len {
                    arrivals.fetch_add(1, Ordering::SeqCst);
                    return; // drop the connection
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_never_replayed() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let (x, y) = (
        swallowing_backend(arrivals.clone()).await,
        swallowing_backend(arrivals.clone()).await,
    );
    let lb = Autolb::start(&pool_yaml(&[x, y], "    retries: 2\n"));
    let mut client = Client::connect(lb.addr("web")).await;
    let post = http::Request::post("/orders")
        .header("host", "shop")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"qty\":1}",
        )))
        .expect("request");
    let r = client.request(post).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        arrivals.load(Ordering::SeqCst),
        1,
        "the POST arrived exactly once"
    );

    // A GET (idempotent, no body) is retried: three tries, three arrivals.
    arrivals.store(0, Ordering::SeqCst);
    let r = Client::connect(lb.addr("web")).await.get("/items").await;
    assert_eq!(r.status, 502);
    assert_eq!(arrivals.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_get_that_met_a_broken_backend_reports_its_tries() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let broken = swallowing_backend(arrivals.clone()).await;
    let (good, better) = (echo("good"), echo("better"));
    let lb = Autolb::start(&pool_yaml(
        &[broken, good.addr, better.addr],
        "    retries: 1\n",
    ));
    let mut client = Client::connect(lb.addr("web")).await;
    let mut tries = Vec::new();
    for _ in 0..6 {
        let r = client.get("/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        tries.push(
            r.headers
                .get("x-autolb-tries")
                .map(|v| v.to_str().unwrap_or("").to_string()),
        );
    }
    assert!(tries.contains(&Some("2".to_string())), "{tries:?}");
    assert!(
        tries.contains(&None),
        "first-try answers carry no header: {tries:?}"
    );
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let e = echo("e");
    let yaml = format!("shutdown_grace: 20s\n{}", pool_yaml(&[e.addr], ""));
    let lb = Autolb::start(&yaml);
    let addr = lb.addr("web");
    let mut inflight = Vec::new();
    for _ in 0..3 {
        inflight.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /delay/6000 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }));
    }
    // The three requests are at the backend.
    common::wait_until(10, "three requests in flight", || async {
        let s = common::get(lb.admin, "/loadbalancer/status").await.json();
        (s["pools"][0]["backends"][0]["active_requests"] == 3).then_some(())
    })
    .await;
    unsafe { libc::kill(lb.proc.pid() as i32, libc::SIGTERM) };
    assert!(
        lb.proc
            .log_shows("draining: no longer accepting", Duration::from_secs(10)),
        "{}",
        lb.proc.log()
    );
    // From the start of the drain a new connection is refused by the kernel, at once
    // (not accepted and left unanswered), while the slow requests are still running.
    let refused =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect answered at once");
    match refused {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted during the drain"),
    }
    assert!(
        inflight.iter().all(|t| !t.is_finished()),
        "the slow requests should still be running"
    );
    for t in inflight {
        let answer = t.await.expect("client");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut lb = lb;
        lb.proc.child.wait().expect("wait")
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(0));
}
