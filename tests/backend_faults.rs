//! Backends that fail in the middle of an exchange, through the real program against
//! raw-TCP backends: a broken response is a 502 (or an aborted one once its head went out),
//! a WARN line and a failure of its backend, never a counted success; a malformed answer or
//! a response timeout is never sent back to the backend that gave it; `timeouts.
//! request_total` bounds the client's whole wait; a dead backend under load writes a log
//! line a second, not one per request.

mod common;
#[path = "upstream_client/support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{backend_list, config, Autolb};
use support::{ok, Act, Backend, Conn, HYPER, OWN};

/// Both Transfer-Encoding and Content-Length, a valid chunked body.
const CL_TE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
/// An invalid chunk size, in the same write as the head.
const BAD_CHUNK: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
/// 10 bytes of a 100-byte body, then the connection closes.
const TRUNCATED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";

fn pool_yaml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list = backend_list(backends, "");
    config(
        1,
        "",
        &format!("pools:\n  web:\n    balance: round_robin\n{pool_extra}    backends:\n{list}"),
    )
}

/// `autolb_requests_total` of `backend` with status class `code`.
async fn requests_total(lb: &Autolb, backend: SocketAddr, code: &str) -> u64 {
    let metrics = common::get(lb.admin, "/metrics").await.text();
    let key =
        format!("autolb_requests_total{{pool=\"web\",backend=\"{backend}\",code=\"{code}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{metrics}"))
}

/// The `error` of autolb's JSON answer.
fn error_of(r: &support::Reply) -> String {
    let v: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON");
    assert_eq!(v["pool"], "web", "{v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

/// A script answering every request with the broken response its path names.
fn broken(r: &support::Req) -> Act {
    match r.path() {
        "/clte" => Act::Close(CL_TE.to_vec()),
        "/badchunk" => Act::Close(BAD_CHUNK.to_vec()),
        "/truncated" => Act::Close(TRUNCATED.to_vec()),
        _ => Act::Send(ok("", b"good")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_response_is_a_502_or_an_abort_a_warn_line_and_a_failure_of_its_backend() {
    // One backend per request (round robin, no retries): each failure is its own backend's,
    // and no log line of one can hide another's.
    let cases: [(&str, &str, &'static [u8]); 5] = [
        ("POST", "/clte", b"abc"),
        ("GET", "/badchunk", b""),
        ("POST", "/badchunk", b"abc"),
        ("GET", "/truncated", b""),
        ("POST", "/truncated", b"abc"),
    ];
    let mut backends = Vec::new();
    for _ in 0..cases.len() {
        backends.push(Backend::start(broken).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = Autolb::start(&pool_yaml(&addrs, "    retries: 0\n"));
    let addr = lb.addr("web");
    for (method, path, body) in cases {
        let what = format!("{method} {path}");
        let r = Conn::open(addr)
            .await
            .send_body(method, path, &[], body)
            .await;
        // Never a complete response: a 502 when nothing of it had gone out yet, else an
        // aborted body.
        if let Ok(r) = &r {
            assert!(
                r.status == 502 || r.body.is_err(),
                "{what}: complete {} {:?}",
                r.status,
                r.body
            );
        }
        // The head and the body came in one write: found before anything was forwarded.
        if what == "POST /clte" || what == "GET /badchunk" {
            let r = r.as_ref().expect("a response");
            assert_eq!(r.status, 502, "{what}");
            assert_eq!(error_of(r), "backend failed", "{what}");
        }
        let served = backends
            .iter()
            .find(|b| !b.seen_like(&format!("{method} {path} ")).is_empty())
            .unwrap_or_else(|| panic!("{what} reached no backend"))
            .addr;
        assert_eq!(requests_total(&lb, served, "2xx").await, 0, "{what}");
        assert_eq!(requests_total(&lb, served, "failed").await, 1, "{what}");
        let warned = |log: String| {
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("backend={served}")))
        };
        common::wait_until(5, &format!("a WARN line for {what}"), || {
            let found = warned(lb.proc.log());
            async move { found.then_some(()) }
        })
        .await;
    }
}

async fn each_method_reaches_a_malformed_backend_once(env: &[(&str, &str)]) {
    let backend = Backend::start(|_| Act::Close(CL_TE.to_vec())).await;
    let lb = Autolb::start_with_env(&pool_yaml(&[backend.addr], "    retries: 2\n"), env);
    let mut c = Conn::open(lb.addr("web")).await;
    for method in ["GET", "PUT", "DELETE", "OPTIONS"] {
        let r = c.send(method, "/x", &[]).await.expect("a response");
        assert_eq!(r.status, 502, "{method}");
        assert_eq!(
            backend.seen_like(&format!("{method} /x ")).len(),
            1,
            "{method}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_never_resent_to_its_backend_own_client() {
    each_method_reaches_a_malformed_backend_once(OWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_never_resent_to_its_backend_hyper_client() {
    each_method_reaches_a_malformed_backend_once(HYPER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_retried_on_another_backend() {
    let bad = Backend::start(|_| Act::Close(CL_TE.to_vec())).await;
    let good = Backend::start(|_| Act::Send(ok("", b"good"))).await;
    let lb = Autolb::start(&pool_yaml(&[bad.addr, good.addr], "    retries: 2\n"));
    let mut c = Conn::open(lb.addr("web")).await;
    let mut retried = 0;
    for i in 0..6 {
        let path = format!("/r{i}");
        let r = c.get(&path).await;
        assert_eq!((r.status, r.body()), (200, &b"good"[..]), "{path}");
        let tried = bad.seen_like(&format!("GET {path} ")).len();
        assert!(
            tried <= 1,
            "{path} reached the malformed backend {tried} times"
        );
        if tried == 1 {
            assert_eq!(r.header("x-autolb-tries"), Some("2"), "{path}");
            retried += 1;
        }
    }
    assert!(retried > 0, "round robin never tried the malformed backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_costs_one_response_timeout() {
    let hung = Backend::start(|_| Act::Hang(Vec::new())).await;
    let lb = Autolb::start(&pool_yaml(
        &[hung.addr],
        "    retries: 2\n    timeouts: { response: 2s }\n",
    ));
    let began = Instant::now();
    let r = Conn::open(lb.addr("web")).await.get("/").await;
    let took = began.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(error_of(&r), "backend timed out");
    // One response timeout (2 s), not one per try (6 s).
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(hung.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_total_bounds_the_clients_whole_wait() {
    let mut hung = Vec::new();
    for _ in 0..3 {
        hung.push(Backend::start(|_| Act::Hang(Vec::new())).await);
    }
    let addrs: Vec<SocketAddr> = hung.iter().map(|b| b.addr).collect();
    let lb = Autolb::start(&pool_yaml(
        &addrs,
        "    retries: 2\n    timeouts: { response: 2s, request_total: 2500ms }\n",
    ));
    let began = Instant::now();
    let r = Conn::open(lb.addr("web")).await.get("/").await;
    let took = began.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(error_of(&r), "request timed out");
    // A first try of 2 s, a second one cut to what was left: 2.5 s, not 3 x 2 s.
    assert!(took >= Duration::from_millis(2400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let tries: usize = hung.iter().map(|b| b.seen().len()).sum();
    assert_eq!(tries, 2);
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    // Below the ephemeral range: no other bind or connection of the tests takes it.
    std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_under_load_writes_a_line_a_second() {
    let good = Backend::start(|_| Act::Send(ok("", b"good"))).await;
    let dead = dead_addr();
    let lb = Autolb::start(&pool_yaml(&[dead, good.addr], "    retries: 2\n"));
    let addr = lb.addr("web");
    let lines = |lb: &Autolb| {
        lb.proc
            .log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("backend={dead}")))
            .count()
    };
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            for _ in 0..50 {
                let r = c.get("/").await;
                assert_eq!((r.status, r.body()), (200, &b"good"[..]));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let secs = began.elapsed().as_secs();
    // About 100 of the 200 requests met the dead backend first.
    assert!(lb
        .proc
        .log_shows(&format!("backend={dead}"), Duration::from_secs(5)));
    let burst = lines(&lb);
    assert!(
        burst as u64 <= secs + 2,
        "{burst} WARN lines in {secs}s:\n{}",
        lb.proc.log()
    );
    // The next line after a held-back burst says how many it stands for.
    let mut c = Conn::open(addr).await;
    let summary = "more like this in the last";
    for _ in 0..100 {
        if lb.proc.log().contains(summary) {
            break;
        }
        assert_eq!(c.get("/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lb.proc.log_shows(summary, Duration::from_secs(1)),
        "{}",
        lb.proc.log()
    );
}
