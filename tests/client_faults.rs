//! Hostile or broken clients through the real program: a request body over `max_body` or
//! cut off mid-way is the client's fault (413 / 400) and never counts against a backend;
//! CONNECT and TRACE are answered 405, never forwarded; `max_header_bytes` holds exactly,
//! however the head arrives.

mod common;
#[path = "upstream_client/support.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{backend_list, config, Autolb, Client};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend (HTTP/1.1, or HTTP/2 with prior knowledge) that counts request heads as they
/// arrive and answers 200 after reading the whole body.
async fn reading_backend(heads: Arc<AtomicUsize>, h2: bool) -> SocketAddr {
    common::raw_backend(move |tcp| {
        let heads = heads.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let heads = heads.clone();
                    async move {
                        heads.fetch_add(1, Ordering::SeqCst);
                        let len = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len(),
                            Err(_) => 0,
                        };
                        let body = Full::new(Bytes::from(format!("read {len}")));
                        Ok::<_, std::convert::Infallible>(http::Response::new(body))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(tcp);
            if h2 {
                let exec = hyper_util::rt::TokioExecutor::new();
                let _ = hyper::server::conn::http2::Builder::new(exec)
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            }
        }
    })
    .await
}

/// What autolb answers on `s` until it closes (at most 10 s).
async fn answer(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Wait until the backends have seen `n` request heads.
async fn heads_reach(heads: &AtomicUsize, n: usize) {
    common::wait_until(10, "the request head at a backend", || {
        let seen = heads.load(Ordering::SeqCst);
        async move { (seen >= n).then_some(()) }
    })
    .await;
}

async fn client_faults_never_count_against_a_backend(h2: bool) {
    let heads = Arc::new(AtomicUsize::new(0));
    let (a, b) = (
        reading_backend(heads.clone(), h2).await,
        reading_backend(heads.clone(), h2).await,
    );
    let list = backend_list(&[a, b], "");
    let protocol = if h2 { "h2" } else { "h1" };
    let lb = Autolb::start(&config(
        2,
        ", limits: { max_body: 1000 }",
        &format!(
            "pools:\n  web:\n    protocol: {protocol}\n    balance: round_robin\n    retries: 2\n    \
             outlier: {{ consecutive_failures: 2, max_ejection_percent: 100 }}\n    backends:\n{list}"
        ),
    ));
    let addr = lb.addr("web");
    let mut sent = 0;
    for i in 0..6 {
        // A chunked body that outgrows max_body after its head went to a backend: 413.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              10\r\n0123456789abcdef\r\n",
        )
        .await
        .expect("write");
        sent += 1;
        heads_reach(&heads, sent).await;
        // Nothing after the size line: every byte sent is read, so the close after the
        // answer is a FIN (unread bytes would make it a reset that can eat the answer).
        s.write_all(b"800\r\n").await.expect("write");
        let got = answer(s).await;
        assert!(got.starts_with("HTTP/1.1 413"), "POST {i}: {got}");
        assert!(got.contains("request body too large"), "POST {i}: {got}");

        // A client that leaves in the middle of its body.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n0123456789")
            .await
            .expect("write");
        sent += 1;
        heads_reach(&heads, sent).await;
        drop(s);
    }
    // Every backend still takes requests; none was ejected or charged with a failure.
    let mut c = Client::connect(addr).await;
    for _ in 0..4 {
        let r = c.get("/").await;
        assert_eq!((r.status, r.text()), (200, "read 0".to_string()));
    }
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    for backend in status["pools"][0]["backends"].as_array().expect("backends") {
        assert_ne!(backend["health"], "ejected", "{backend}");
        assert_eq!(backend["failures"], 0, "{backend}");
    }
    let events = status["events"].as_array().expect("events");
    assert!(events.iter().all(|e| e["event"] != "ejected"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_never_count_against_a_backend_h1() {
    client_faults_never_count_against_a_backend(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_never_count_against_an_h2_backend() {
    client_faults_never_count_against_a_backend(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_trace_are_answered_405_and_never_forwarded() {
    let backend = support::Backend::start(|_| support::Act::Send(support::ok("", b"ok"))).await;
    let lb = support::start(backend.addr, "", &[]);
    let addr = lb.addr("web");
    for raw in [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        // A client that starts its tunnel at once: the bytes are never read as a request.
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00\x05hello",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw).await.expect("write");
        let got = answer(s).await;
        let what = String::from_utf8_lossy(&raw[..raw.len().min(24)]).into_owned();
        assert!(got.starts_with("HTTP/1.1 405"), "{what}: {got}");
        let body = got.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("not proxied")), "{json}");
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "{what}: {got}");
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    let r = support::Conn::open(addr).await.get("/").await;
    assert_eq!((r.status, r.body()), (200, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_holds_exactly() {
    let backend = support::Backend::start(|_| support::Act::Send(support::ok("", b"ok"))).await;
    // The default limit (64 KiB), on a plain and on an h2c (auto-detecting) listener.
    let list = backend_list(&[backend.addr], "");
    for listener_extra in ["", ", h2c: true"] {
        let lb = Autolb::start(&config(
            1,
            listener_extra,
            &format!("pools:\n  web:\n    backends:\n{list}"),
        ));
        let addr = lb.addr("web");
        let head = |total: usize| {
            // "GET / HTTP/1.1\r\nHost: a\r\nX: " + value + "\r\nConnection: close\r\n\r\n"
            let value = "v".repeat(total - 28 - 23);
            let h = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {value}\r\nConnection: close\r\n\r\n");
            assert_eq!(h.len(), total);
            h
        };
        for (total, status) in [(70_000, "431"), (65_537, "431"), (65_536, "200")] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(head(total).as_bytes()).await.expect("write");
            let got = answer(s).await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status}")),
                "{listener_extra:?} {total}-byte head: {}",
                &got[..got.len().min(200)]
            );
        }
    }
    assert_eq!(backend.seen().len(), 2, "only the heads within the limit");
}
