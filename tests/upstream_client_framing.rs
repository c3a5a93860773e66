//! autolb's own HTTP/1.1 upstream client when things go wrong, through the real program
//! against raw-TCP backends: keep-alive connections the backend closed (stale check and
//! resend, never for a non-idempotent request), interim responses, broken response heads
//! and bodies (502 or an aborted body, and the connection is never reused), and the
//! response and idle timeouts. Bodies and reuse: `upstream_client.rs`.

mod common;
#[path = "upstream_client/support.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{ok, start, trickle, Act, Backend, Conn, Step, HYPER, OWN};

const SLEEP_MS: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_backend_closed_is_not_used() {
    // Every answer is followed by a close 200 ms later, without `Connection: close`.
    let backend = Backend::start(|r| {
        let close_now = r.path().starts_with("/now");
        let steps = vec![Step::Write(ok("", r.path().as_bytes())), Step::Sleep(200)];
        match close_now {
            true => Act::Close(ok("", r.path().as_bytes())),
            false => Act::Steps(steps, true),
        }
    })
    .await;
    let lb = start(backend.addr, "    retries: 0\n", OWN);
    let mut c = Conn::open(lb.addr("web")).await;
    for path in ["/a", "/b"] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.body()), (200, path.as_bytes()));
        tokio::time::sleep(Duration::from_millis(SLEEP_MS)).await;
    }
    // Not idempotent: sent once only, so the closed connection must be noticed before.
    let r = c
        .send("POST", "/post", &[("content-length", "0")])
        .await
        .expect("POST");
    assert_eq!((r.status, r.body()), (200, &b"/post"[..]));
    assert_eq!(backend.seen_like("POST /post ").len(), 1);
    assert!(backend.seen_like("POST /post ")[0]
        .head
        .to_ascii_lowercase()
        .contains("content-length: 0\r\n"));
    // The backend closes right after answering: the next GET meets the stale connection
    // (stale check) or a connection closing under it (resent): never an error.
    for i in 0..20 {
        let path = format!("/now/{i}");
        let r = c.get(&path).await;
        assert_eq!((r.status, r.body()), (200, path.as_bytes()));
    }
    // One request per connection: none went on a connection the backend had closed.
    let seen = backend.seen();
    assert!(seen.iter().all(|r| r.nth == 0), "{seen:?}");
    assert_eq!(seen.len(), backend.accepts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_backend_read_and_dropped_is_resent_only_when_idempotent() {
    // The second request on each connection is read and the connection closed unanswered.
    let backend = Backend::start(|r| match r.nth {
        0 => Act::Send(ok("", r.path().as_bytes())),
        _ => Act::Close(Vec::new()),
    })
    .await;
    // Default retries (2): neither the own client nor a retry may send the POST again.
    let log = [OWN[0], ("AUTOLB_LOG", "info,autolb::upstream=debug")];
    let lb = start(backend.addr, "", &log);
    let mut c = Conn::open(lb.addr("web")).await;
    let r = c.get("/first").await;
    assert_eq!((r.status, r.body()), (200, &b"/first"[..]));
    let r = c.get("/again").await;
    assert_eq!((r.status, r.body()), (200, &b"/again"[..]));
    // Resent by the own client on a fresh connection, not as a retry of the request.
    assert!(r.header("x-autolb-tries").is_none());
    let again: Vec<(usize, usize)> = backend
        .seen_like("GET /again ")
        .iter()
        .map(|r| (r.conn, r.nth))
        .collect();
    assert_eq!(again, [(0, 1), (1, 0)]);
    common::wait_until(5, "the resend in the log", || async {
        lb.proc
            .log()
            .contains("resending on a new one")
            .then_some(())
    })
    .await;
    // The POST meets connection 1 the same way: 502, and the backend saw it exactly once.
    let r = c
        .send("POST", "/post", &[("content-length", "0")])
        .await
        .expect("POST");
    assert_eq!(r.status, 502);
    let posts: Vec<(usize, usize)> = backend
        .seen_like("POST /post ")
        .iter()
        .map(|r| (r.conn, r.nth))
        .collect();
    assert_eq!(posts, [(1, 1)]);
    assert_eq!(backend.accepts(), 2);
}

async fn interim_responses_are_skipped(env: &[(&str, &str)]) {
    const FINAL: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
HTTP/1.1 102 Processing\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: final\r\n\r\nfinal";
    let backend = Backend::start(|r| match r.path() {
        "/trickle" => Act::Steps(trickle(FINAL, 1), false),
        "/split" => Act::Steps(
            vec![
                Step::Write(FINAL[..25].to_vec()),
                Step::Sleep(100),
                Step::Write(FINAL[25..].to_vec()),
            ],
            false,
        ),
        _ => Act::Send(FINAL.to_vec()),
    })
    .await;
    let lb = start(backend.addr, "    retries: 0\n", env);
    let mut c = Conn::open(lb.addr("web")).await;
    for path in ["/one-write", "/split", "/trickle", "/one-write"] {
        let r = c.get(path).await;
        assert_eq!(
            (r.status, r.header("x-case")),
            (200, Some("final")),
            "{path}"
        );
        assert_eq!(r.body(), b"final", "{path}");
    }
    assert_eq!(backend.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_own_client() {
    interim_responses_are_skipped(OWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_hyper_client() {
    interim_responses_are_skipped(HYPER).await;
}

async fn bytes_after_a_response_are_never_the_next_response(env: &[(&str, &str)]) {
    const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
    let backend = Backend::start(|r| {
        let answer: &[u8] = match (r.method(), r.path()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            (_, "/length") => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            (_, "/chunked") => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            }
            (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n",
            (_, "/late") => {
                let steps = vec![
                    Step::Write(ok("", b"ok")),
                    Step::Sleep(100),
                    Step::Write(EVIL.to_vec()),
                ];
                return Act::Steps(steps, false);
            }
            _ => return Act::Send(ok("", b"good")),
        };
        Act::Send([answer, EVIL].concat())
    })
    .await;
    let lb = start(backend.addr, "    retries: 0\n", env);
    let mut c = Conn::open(lb.addr("web")).await;
    for (method, path) in [
        ("GET", "/length"),
        ("GET", "/chunked"),
        ("GET", "/204"),
        ("HEAD", "/head"),
        ("GET", "/late"),
    ] {
        let r = c.send(method, path, &[]).await.expect(path);
        let body: &[u8] = if method == "HEAD" || path == "/204" {
            b""
        } else {
            b"ok"
        };
        assert_eq!(r.body(), body, "{path}");
        // What came after the response arrives while the connection is idle (or is there
        // already): the connection is dropped, not asked for another response.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = c.get("/good").await;
        assert_eq!((r.status, r.body()), (200, &b"good"[..]), "after {path}");
        let seen = backend.seen();
        let [.., first, next] = &seen[..] else {
            panic!("{path}: {seen:?}")
        };
        assert_ne!(first.conn, next.conn, "{path}: connection reused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_are_never_the_next_response_own_client() {
    bytes_after_a_response_are_never_the_next_response(OWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_are_never_the_next_response_hyper_client() {
    bytes_after_a_response_are_never_the_next_response(HYPER).await;
}

/// Response heads no client may trust: each one answered on a connection the backend keeps
/// serving on, so that a reuse would show.
fn broken_heads() -> Vec<(&'static str, Vec<u8>)> {
    let long = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(300 * 1024)
    );
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok");
    let cases: [(&str, &[u8]); 15] = [
        ("differing CL", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"),
        ("differing CL list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!"),
        ("CL +2", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
        ("CL 0x2", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok"),
        ("CL overflow", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nok"),
        ("CL + TE", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("TE + CL", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("TE in HTTP/1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("status 2000", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
        ("status 099", b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok"),
        ("not HTTP", b"HTTQ/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ("NUL in value", b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
        ("space before colon", b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 2\r\n\r\nok"),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    ];
    let mut all: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (*n, b.to_vec())).collect();
    all.push(("101 header fields", many.into_bytes()));
    all.push(("300 KiB head", long.into_bytes()));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_response_heads_are_502_and_the_connection_is_dropped() {
    let cases = broken_heads();
    let answers = cases.clone();
    let backend = Backend::start(move |r| {
        let bad = r.path().strip_prefix("/bad/").and_then(|i| i.parse().ok());
        match bad.and_then(|i: usize| answers.get(i)) {
            Some((_, answer)) => Act::Send(answer.clone()),
            None => Act::Send(ok("", b"good")),
        }
    })
    .await;
    let lb = start(backend.addr, "    retries: 0\n", OWN);
    let mut c = Conn::open(lb.addr("web")).await;
    for (i, (name, _)) in cases.iter().enumerate() {
        let r = c.get(&format!("/bad/{i}")).await;
        assert_eq!(r.status, 502, "{name}: {:?}", r.body);
        // The next request goes on another connection (the broken one was dropped).
        let r = c.get("/good").await;
        assert_eq!((r.status, r.body()), (200, &b"good"[..]), "{name}");
        let seen = backend.seen();
        let [.., bad, good] = &seen[..] else {
            panic!("{name}: {seen:?}")
        };
        assert!(bad.head.starts_with(&format!("GET /bad/{i} ")), "{name}");
        assert_ne!(bad.conn, good.conn, "{name}: connection reused");
    }
    assert_eq!(backend.accepts(), cases.len() + 1);
}

/// A head just over the 64 KiB limit, delivered in one piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_64k_is_502() {
    let head = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let backend = Backend::start(move |_| Act::Send(head.clone().into_bytes())).await;
    let lb = start(backend.addr, "    retries: 0\n", OWN);
    let r = Conn::open(lb.addr("web")).await.get("/").await;
    assert_eq!(r.status, 502);
}

/// Bodies that break off after the head went out: the client must see an aborted
/// response, never a clean one, and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_abort_the_response_and_drop_the_connection() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let cases: [(&str, &str, bool); 6] = [
        ("bad chunk size", "zz\r\nxx\r\n0\r\n\r\n", false),
        (
            "chunk longer than its size",
            "3\r\nworld\r\n0\r\n\r\n",
            false,
        ),
        ("bare LF after size", "3\nabc\r\n0\r\n\r\n", false),
        (
            "NUL in chunk extension",
            "3;a\x00\r\nabc\r\n0\r\n\r\n",
            false,
        ),
        ("chunked cut by close", "3\r\nab", true),
        ("trailer without CRLF", "0\r\nX: y\nZ\r\n\r\n", false),
    ];
    let backend = Backend::start(move |r| {
        let case = r.path().strip_prefix("/bad/").and_then(|i| i.parse().ok());
        match case.and_then(|i: usize| cases.get(i)) {
            Some(&(_, rest, close)) => Act::Steps(
                vec![
                    Step::Write(chunked.as_bytes().to_vec()),
                    Step::Sleep(50),
                    Step::Write(rest.as_bytes().to_vec()),
                ],
                close,
            ),
            None if r.path() == "/short" => {
                Act::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec())
            }
            None => Act::Send(ok("", b"good")),
        }
    })
    .await;
    let lb = start(backend.addr, "    retries: 0\n", OWN);
    let addr = lb.addr("web");
    let paths = (0..cases.len()).map(|i| format!("/bad/{i}"));
    for path in paths.chain(["/short".to_string()]) {
        let r = Conn::open(addr).await.send("GET", &path, &[]).await;
        if let Ok(r) = &r {
            assert!(
                r.body.is_err(),
                "{path}: complete {} {:?}",
                r.status,
                r.body
            );
        }
        let r = Conn::open(addr).await.get("/good").await;
        assert_eq!((r.status, r.body()), (200, &b"good"[..]), "{path}");
        let seen = backend.seen();
        let [.., bad, good] = &seen[..] else {
            panic!("{path}: {seen:?}")
        };
        assert!(bad.head.starts_with(&format!("GET {path} ")), "{path}");
        assert_ne!(bad.conn, good.conn, "{path}: connection reused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_is_504_and_a_silent_body_is_cut() {
    let backend = Backend::start(|r| match r.path() {
        "/hang" => Act::Hang(Vec::new()),
        "/hang-in-head" => Act::Hang(b"HTTP/1.1 200 OK\r\nContent-Len".to_vec()),
        "/hang-in-body" => {
            Act::Hang(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123".to_vec())
        }
        _ => Act::Send(ok("", b"fast")),
    })
    .await;
    let lb = start(
        backend.addr,
        "    retries: 0\n    timeouts: { connect: 1s, response: 300ms, idle: 300ms }\n",
        OWN,
    );
    let mut c = Conn::open(lb.addr("web")).await;
    for path in ["/hang", "/hang-in-head"] {
        let began = Instant::now();
        let r = c.get(path).await;
        assert_eq!(r.status, 504, "{path}");
        assert!(began.elapsed() < Duration::from_secs(10), "{path}");
        // The client connection is still usable; the hung backend connection is not reused.
        let r = c.get("/fast").await;
        assert_eq!((r.status, r.body()), (200, &b"fast"[..]));
    }
    // The head came in time, then the body went silent: cut by the idle timeout.
    let began = Instant::now();
    let r = c.get("/hang-in-body").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "{:?}", r.body);
    assert!(began.elapsed() < Duration::from_secs(10));
    let r = Conn::open(lb.addr("web")).await.get("/fast").await;
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    for (i, req) in seen.iter().enumerate() {
        if req.path().starts_with("/hang") {
            assert!(seen[i + 1..].iter().all(|r| r.conn != req.conn), "{seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_within_the_response_timeout_arrive_on_a_reused_connection() {
    // Each answer takes 1 s of a 3 s timeout; three in a row on one connection take longer
    // than one timeout, so each request must get its own deadline.
    let backend = Backend::start(|r| {
        let steps = vec![Step::Sleep(1000), Step::Write(ok("", r.path().as_bytes()))];
        Act::Steps(steps, false)
    })
    .await;
    let lb = start(
        backend.addr,
        "    retries: 0\n    timeouts: { connect: 1s, response: 3s, idle: 10s }\n",
        OWN,
    );
    let mut c = Conn::open(lb.addr("web")).await;
    for path in ["/1", "/2", "/3"] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.body()), (200, path.as_bytes()));
    }
    assert_eq!(backend.accepts(), 1);
}
