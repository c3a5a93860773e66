//! A pool's `limits: {max_inflight, max_queue, queue_timeout}` through the real autolb: the
//! backend never sees more than `max_inflight` requests at once, a full queue gets 503 at
//! once, a queued request gets 503 after `queue_timeout`, slots come back after streamed
//! (or aborted) bodies and after a WebSocket's 101, a reload changes the limit, and bad
//! values are reported at their line.
//!
//! The backends here hold each request until the test opens their gate, so every check is
//! about order (what happened while requests were held), never about speed.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{backend_list, config, echo, hyper_backend, raw_backend, wait_until, Autolb, Client};
use http_body_util::Full;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

/// A backend that counts concurrent requests and holds each until the gate lets it go.
struct Held {
    now: AtomicUsize,
    max: AtomicUsize,
    arrived: AtomicUsize,
    gate: Semaphore,
}

impl Held {
    fn release_all(&self) {
        self.gate.add_permits(1000);
    }

    async fn arrived(&self, n: usize) {
        wait_until(10, &format!("{n} requests at the backend"), || async {
            (self.arrived.load(Ordering::SeqCst) >= n).then_some(())
        })
        .await;
    }
}

async fn held_backend() -> (SocketAddr, Arc<Held>) {
    let held = Arc::new(Held {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
        arrived: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    });
    let h = held.clone();
    let addr = hyper_backend(move |_req| {
        let h = h.clone();
        async move {
            h.arrived.fetch_add(1, Ordering::SeqCst);
            let now = h.now.fetch_add(1, Ordering::SeqCst) + 1;
            h.max.fetch_max(now, Ordering::SeqCst);
            if let Ok(p) = h.gate.acquire().await {
                p.forget();
            }
            h.now.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(Full::new(Bytes::from_static(b"held")))
        }
    })
    .await;
    (addr, held)
}

fn yaml(backend: SocketAddr, limits: &str) -> String {
    config(
        2,
        "",
        &format!(
            "pools:\n  web:\n    limits: {limits}\n    backends:\n{}",
            backend_list(&[backend], "")
        ),
    )
}

async fn pool_status(lb: &Autolb) -> serde_json::Value {
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    status["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "web"))
        .cloned()
        .expect("pool web in /loadbalancer/status")
}

/// Start `n` GETs of `/`, each on its own connection; answers arrive on the channel.
fn spawn_gets(addr: SocketAddr, n: usize) -> tokio::sync::mpsc::UnboundedReceiver<common::Reply> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..n {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(common::get(addr, "/").await);
        });
    }
    rx
}

async fn next_reply(rx: &mut tokio::sync::mpsc::UnboundedReceiver<common::Reply>) -> common::Reply {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an answer within 10s")
        .expect("answer")
}

fn assert_refused(r: &common::Reply, reason: &str) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], reason, "{}", r.text());
    assert_eq!(r.json()["pool"], "web", "{}", r.text());
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_the_backend_never_sees_more_than_max_inflight() {
    let (backend, held) = held_backend().await;
    let lb = Autolb::start(&yaml(
        backend,
        "{ max_inflight: 2, max_queue: 2, queue_timeout: 60s }",
    ));
    let mut rx = spawn_gets(lb.addr("web"), 6);
    // Two hold the slots, two wait in the queue, two are refused — while nothing moves.
    held.arrived(2).await;
    let first = next_reply(&mut rx).await;
    let second = next_reply(&mut rx).await;
    assert_refused(&first, "queue full");
    assert_refused(&second, "queue full");
    let web = wait_until(10, "two queued", || async {
        let web = pool_status(&lb).await;
        (web["queue"]["queued"] == 2).then_some(web)
    })
    .await;
    assert_eq!(web["queue"]["inflight"], 2, "{web}");
    assert_eq!(web["queue"]["max_inflight"], 2, "{web}");
    assert_eq!(web["queue"]["max_queue"], 2, "{web}");
    assert_eq!(web["queue"]["queue_timeout_ms"], 60_000, "{web}");
    assert_eq!(web["queue"]["refused"]["full"], 2, "{web}");
    assert_eq!(web["local_errors"], 2, "{web}");
    let metrics = common::get(lb.admin, "/metrics").await.text();
    assert!(
        metrics.contains("autolb_pool_queued{pool=\"web\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("autolb_pool_queue_refused_total{pool=\"web\",reason=\"full\"} 2"),
        "{metrics}"
    );
    assert_eq!(held.arrived.load(Ordering::SeqCst), 2);
    assert!(rx.try_recv().is_err(), "nothing else answered yet");

    held.release_all();
    for _ in 0..4 {
        let r = next_reply(&mut rx).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "held");
    }
    assert_eq!(held.arrived.load(Ordering::SeqCst), 4);
    assert_eq!(
        held.max.load(Ordering::SeqCst),
        2,
        "at most max_inflight at once"
    );
    let web = pool_status(&lb).await;
    assert_eq!(web["queue"]["inflight"], 0, "{web}");
    assert_eq!(web["queue"]["queued"], 0, "{web}");
    assert!(
        lb.proc.log().contains("queue is full: 503"),
        "{}",
        lb.proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_gets_503_after_the_queue_timeout_while_the_slot_is_held() {
    let (backend, held) = held_backend().await;
    let lb = Autolb::start(&yaml(
        backend,
        "{ max_inflight: 1, max_queue: 5, queue_timeout: 300ms }",
    ));
    let addr = lb.addr("web");
    let holder = tokio::spawn(common::get(addr, "/"));
    held.arrived(1).await;
    // The holder stays held until this answer is in: the timeout, not the slot, ended it.
    let r = common::get(addr, "/").await;
    assert_refused(&r, "queue timeout");
    assert!(!holder.is_finished(), "the slot holder is still held");
    assert_eq!(
        held.arrived.load(Ordering::SeqCst),
        1,
        "the backend never saw it"
    );
    let metrics = common::get(lb.admin, "/metrics").await.text();
    assert!(
        metrics.contains("autolb_pool_queue_refused_total{pool=\"web\",reason=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        lb.proc.log().contains("within queue_timeout: 503"),
        "{}",
        lb.proc.log()
    );
    held.release_all();
    let r = holder.await.expect("holder");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A keep-alive HTTP/1.1 backend answering every request with `chunks` chunks of 8 KiB,
/// 5 ms apart: bodies that take many frames to forward. With a `gate`, each body stops after
/// its first chunk until the gate lets it go on.
async fn streaming_backend(chunks: usize, gate: Option<Arc<Semaphore>>) -> SocketAddr {
    raw_backend(move |stream| {
        let gate = gate.clone();
        async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                // The request head (GETs only: no body).
                let mut line = String::new();
                loop {
                    line.clear();
                    match read.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if write.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("2000\r\n{}\r\n", "x".repeat(8192));
                for i in 0..chunks {
                    match (&gate, i) {
                        (Some(gate), 1) => {
                            if let Ok(p) = gate.acquire().await {
                                p.forget();
                            }
                        }
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                    if write.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                if write.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_held_until_the_body_is_forwarded() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = streaming_backend(4, Some(gate.clone())).await;
    let lb = Autolb::start(&yaml(backend, "{ max_inflight: 1, max_queue: 0 }"));
    let addr = lb.addr("web");
    // The head and a first chunk are through; the rest of the body is held by the backend.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    while got.len() < 8192 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("first chunk within 10s")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // Its slot is still held: with no queue, the next request is refused.
    assert_refused(&common::get(addr, "/").await, "queue full");
    gate.add_permits(1);
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the rest within 10s")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    // Forwarded completely: the slot is free again.
    gate.add_permits(1);
    let r = common::get(addr, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 4 * 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_come_back_after_streamed_and_aborted_bodies() {
    let backend = streaming_backend(20, None).await;
    // One slot; a leaked one would make the next request wait 5 s and get 503.
    let lb = Autolb::start(&yaml(
        backend,
        "{ max_inflight: 1, max_queue: 4, queue_timeout: 5s }",
    ));
    let addr = lb.addr("web");
    let mut keep_alive = Client::connect(addr).await;
    for i in 0..10 {
        let r = if i % 2 == 0 {
            keep_alive.get("/").await
        } else {
            common::get(addr, "/").await
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.body.len(), 20 * 8192, "request {i}");
    }
    // A client that goes away in the middle of a body gives its slot back too.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 64];
        let n = s.read(&mut head).await.expect("read");
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
        drop(s);
        let r = common::get(addr, "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let web = pool_status(&lb).await;
    assert_eq!(web["queue"]["refused"]["timeout"], 0, "{web}");
    assert_eq!(web["queue"]["refused"]["full"], 0, "{web}");
    wait_until(10, "no slot held", || async {
        (pool_status(&lb).await["queue"]["inflight"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_gives_its_slot_back_once_the_101_is_answered() {
    let app = echo("app");
    let lb = Autolb::start(&yaml(app.addr, "{ max_inflight: 1, max_queue: 0 }"));
    let addr = lb.addr("web");
    let (mut ws, resp) = common::ws_connect(addr, "/ws", &[]).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(common::ws_text(&mut ws).await, "app");
    // The tunnel is open and holds no slot: with no queue, a held slot would mean 503.
    for _ in 0..3 {
        let r = common::get(addr, "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let web = pool_status(&lb).await;
    assert_eq!(web["queue"]["inflight"], 0, "{web}");
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_max_inflight_for_new_requests() {
    let (backend, held) = held_backend().await;
    let lb = Autolb::start(&yaml(backend, "{ max_inflight: 1, max_queue: 0 }"));
    let addr = lb.addr("web");
    let mut rx = spawn_gets(addr, 1);
    held.arrived(1).await;
    assert_refused(&common::get(addr, "/").await, "queue full");

    // Raised to 3 while one request holds a slot: two more go through at once.
    let tmp = lb.config.with_extension("tmp");
    std::fs::write(&tmp, yaml(backend, "{ max_inflight: 3, max_queue: 0 }")).expect("write");
    std::fs::rename(&tmp, &lb.config).expect("rename");
    let mut admin = Client::connect(lb.admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = admin.request(req).await;
    // The file watcher may have applied it first: either way the new limit is live.
    assert!(r.status < 300, "{} {}", r.status, r.text());
    wait_until(10, "max_inflight 3 live", || async {
        (pool_status(&lb).await["queue"]["max_inflight"] == 3).then_some(())
    })
    .await;
    let mut more = spawn_gets(addr, 2);
    held.arrived(3).await;
    assert_refused(&common::get(addr, "/").await, "queue full");
    let web = pool_status(&lb).await;
    assert_eq!(web["queue"]["inflight"], 3, "{web}");

    held.release_all();
    assert_eq!(next_reply(&mut rx).await.status, 200);
    assert_eq!(next_reply(&mut more).await.status, 200);
    assert_eq!(next_reply(&mut more).await.status, 200);
    assert_eq!(held.max.load(Ordering::SeqCst), 3);
}

#[test]
fn bad_limits_are_reported_at_their_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("limits.yaml");
    let text = "listeners:
  - { name: web, listen: \"127.0.0.1:0\", pool: web }
pools:
  web:
    limits:
      max_inflight: 0
      max_queue: 5000000
      queue_timeout: 0s
    backends: [ { address: \"127.0.0.1:1\" } ]
  api:
    limits: { max_queue: 3 }
    backends: [ { address: \"127.0.0.1:2\" } ]
";
    std::fs::write(&file, text).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 1, "{out}{err}");
    let f = file.display().to_string();
    for (line, col, needle) in [
        (
            6,
            21,
            "limits.max_inflight must be between 1 and 1000000, got 0",
        ),
        (
            7,
            18,
            "limits.max_queue must be between 0 and 1000000, got 5000000",
        ),
        (8, 22, "limits.queue_timeout must be greater than 0"),
        (11, 13, "limits needs max_inflight"),
    ] {
        let prefix = format!("{f}:{line}:{col}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "no error {prefix}...{needle}... in:\n{err}"
        );
    }
    assert!(err.contains("4 error(s)"), "{err}");
}
