//! Listener `limits:` and `rate_limit:` through the real autolb: 414, 431, 413, requests per
//! connection, connections per client IP, the header timeout, 2,000 slowloris connections
//! beside normal traffic, and per-IP rate limiting (429 + Retry-After).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{backend_list, config, echo, Autolb, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start(listener_extra: &str, backend: SocketAddr) -> Autolb {
    start_with(2, listener_extra, backend)
}

fn start_with(threads: usize, listener_extra: &str, backend: SocketAddr) -> Autolb {
    Autolb::start(&config(
        threads,
        listener_extra,
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[backend], "")
        ),
    ))
}

/// Send `raw`; autolb's answer until it closes (at most 5 s).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_counts_are_enforced() {
    let app = echo("app");
    let lb = start(
        ", limits: { max_request_line: 1KiB, max_header_bytes: 16KiB, max_headers: 20, max_body: 1000 }",
        app.addr,
    );
    let addr = lb.addr("web");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
    assert!(exchange(addr, long_uri.as_bytes())
        .await
        .starts_with("HTTP/1.1 414"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    assert!(exchange(addr, big.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert!(exchange(addr, many.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let body = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n{}",
        "c".repeat(1001)
    );
    assert!(exchange(addr, body.as_bytes())
        .await
        .starts_with("HTTP/1.1 413"));
    // A chunked body growing past max_body is cut: the request never completes.
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{}\r\n",
        "d".repeat(1000)
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(chunked.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = s.write_all(b"10\r\n0123456789abcdef\r\n0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("\"body_bytes\":1016"), "{out}");
    // Within the limits all is well.
    let ok = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_per_connection_are_bounded() {
    let app = echo("app");
    let lb = start(", limits: { max_requests_per_connection: 3 }", app.addr);
    let mut c = Client::connect(lb.addr("web")).await;
    for i in 1..=3 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        let close = r.headers.get("connection").is_some_and(|v| v == "close");
        assert_eq!(close, i == 3, "request {i}");
    }
    assert!(
        c.try_get("/").await.is_err(),
        "the connection is closed after 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_and_per_listener_are_bounded() {
    let app = echo("app");
    // One worker: connections are accepted in the order they were made.
    let lb = start_with(1, ", limits: { max_connections_per_ip: 3 }", app.addr);
    let addr = lb.addr("web");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // The 4th is closed without an answer.
    let got = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(got.is_empty(), "{got}");
    drop(held.pop());
    // Once autolb has seen the close (bounded wait), a new connection is served.
    let mut got = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        got = exchange(addr, req).await;
        if !got.is_empty() {
            break;
        }
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let lb = start_with(1, ", limits: { max_connections: 2 }", app.addr);
    let addr = lb.addr("web");
    let _a = TcpStream::connect(addr).await.expect("connect");
    let _b = TcpStream::connect(addr).await.expect("connect");
    let got = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(got.is_empty(), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_stop_normal_requests() {
    let app = echo("app");
    let lb = start(", limits: { header_timeout: 3s }", app.addr);
    let addr = lb.addr("web");
    let mut slow = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(s);
        if i % 500 == 499 {
            // Normal requests are served while the slow ones pile up.
            let started = Instant::now();
            let r = common::get(addr, "/").await;
            assert_eq!(r.status, 200);
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }
    for _ in 0..20 {
        let started = Instant::now();
        let r = common::get(addr, "/").await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // The header timeout closes them (each sent a partial head only).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for s in slow.iter_mut().take(50) {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, 50,
        "slow connections are closed by the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit_answers_429_with_retry_after() {
    let app = echo("app");
    let lb = start(", rate_limit: { per_ip: 1/m, burst: 3 }", app.addr);
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.status, 200);
    }
    let r = c.get("/").await;
    assert_eq!(r.status, 429);
    let wait: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(r.json()["error"], "rate limit exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_spares_answers_slower_than_it_and_closes_after_them() {
    let app = echo("app");
    let lb = start(", idle_timeout: 300ms", app.addr);
    let mut c = Client::connect(lb.addr("web")).await;
    // Waiting for a slow answer is not idleness: three times the idle timeout, twice, on
    // the same keep-alive connection.
    for _ in 0..2 {
        let r = c.get("/delay/1000").await;
        assert_eq!(r.status, 200);
    }
    // Once the answers are done, the idle connection is closed (EOF within 10 s).
    let mut s = TcpStream::connect(lb.addr("web")).await.expect("connect");
    s.write_all(b"GET /delay/800 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
