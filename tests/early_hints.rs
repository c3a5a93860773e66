//! A backend's 103 Early Hints through the real program: an HTTP/1.1 client gets each one,
//! Link fields intact and hop-by-hop fields gone, while the backend still works on the final
//! response (the backend waits until the client has read the 103 before it answers), on
//! every request of a keep-alive connection, through the own client and hyper's; an
//! HTTP/1.0 client gets none (RFC 9110 15.2); and curl shows them as a browser's fetch would.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{backend_list, config, raw_backend, Autolb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\n\
Link: </style.css>; rel=preload; as=style\r\n\
Link: </app.js>; rel=preload; as=script\r\n\
Connection: keep-alive\r\n\
Keep-Alive: timeout=5\r\n\r\n";

/// How long the backend waits for the client to report the 103 before it answers anyway
/// with a body that says so.
const WAIT: Duration = Duration::from_secs(10);

/// A raw-TCP backend: every request gets the 103 above; on `/wait` it then waits for a
/// permit (the client has read the 103) before its 200 `hello` (`late` if none came), on
/// other paths it answers at once.
async fn hinting_backend(seen: Arc<Semaphore>) -> SocketAddr {
    raw_backend(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            // Bounded by the connection: each round reads a request or returns.
            loop {
                let head = loop {
                    if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = pending.drain(..end + 4).collect();
                        break String::from_utf8_lossy(&head).to_ascii_lowercase();
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                };
                let body_len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while pending.len() < body_len {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                pending.drain(..body_len);
                if s.write_all(HINTS).await.is_err() {
                    return;
                }
                let mut body: &[u8] = b"hello";
                if head.split(' ').nth(1) == Some("/wait") {
                    match tokio::time::timeout(WAIT, seen.acquire()).await {
                        Ok(Ok(permit)) => permit.forget(),
                        _ => body = b"late!",
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

fn start(backend: SocketAddr, client: &str) -> Autolb {
    let list = backend_list(&[backend], "");
    let yaml = config(1, "", &format!("pools:\n  web:\n    backends:\n{list}"));
    Autolb::start_with_env(&yaml, &[("AUTOLB_UPSTREAM_CLIENT", client)])
}

/// Read from `s` into `got` until it holds a complete head; return the head.
async fn read_head(s: &mut TcpStream, got: &mut Vec<u8>) -> String {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = got.drain(..end + 4).collect();
            return String::from_utf8(head).expect("ASCII head");
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("a head within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed; so far {:?}",
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Read a Content-Length body of the head just read.
async fn read_body(s: &mut TcpStream, got: &mut Vec<u8>, head: &str) -> Vec<u8> {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut buf = [0u8; 4096];
    while got.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the body within 20 s")
            .expect("read");
        assert!(n > 0, "connection closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    got.drain(..len).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_reach_an_http11_client_before_the_backend_answers() {
    let seen = Arc::new(Semaphore::new(0));
    let backend = hinting_backend(seen.clone()).await;
    for client in ["own", "hyper"] {
        let lb = start(backend, client);
        let mut s = TcpStream::connect(lb.addr("web")).await.expect("connect");
        let mut got = Vec::new();
        // GET and POST (a body goes through hyper's client even with the own one), on one
        // keep-alive connection.
        let requests: [&[u8]; 3] = [
            b"GET /wait HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"POST /wait HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /wait?again HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ];
        for req in requests {
            s.write_all(req).await.expect("send");
            let hints = read_head(&mut s, &mut got).await;
            let lines: Vec<&str> = hints.lines().collect();
            assert_eq!(lines[0], "HTTP/1.1 103 Early Hints", "{client}: {hints}");
            let links: Vec<String> = lines
                .iter()
                .filter_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("link: ")
                        .map(String::from)
                })
                .collect();
            assert_eq!(
                links,
                [
                    "</style.css>; rel=preload; as=style",
                    "</app.js>; rel=preload; as=script"
                ],
                "{client}: {hints}"
            );
            let lower = hints.to_ascii_lowercase();
            assert!(
                !lower.contains("keep-alive") && !lower.contains("connection"),
                "{client}: hop-by-hop fields forwarded: {hints}"
            );
            // Only now does the backend send its 200.
            seen.add_permits(1);
            let head = read_head(&mut s, &mut got).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{client}: {head}");
            let body = read_body(&mut s, &mut got, &head).await;
            assert_eq!(
                body, b"hello",
                "{client}: the 103 came only with the final answer"
            );
        }

        // An HTTP/1.0 client never gets a 1xx.
        let mut s = TcpStream::connect(lb.addr("web")).await.expect("connect");
        s.write_all(b"GET /now HTTP/1.0\r\nHost: example.com\r\n\r\n")
            .await
            .expect("send");
        let mut got = Vec::new();
        let head = read_head(&mut s, &mut got).await;
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{client}: {head}");
        assert_eq!(read_body(&mut s, &mut got, &head).await, b"hello");
        assert!(got.is_empty(), "{client}: more after the response: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_shows_the_early_hints_then_the_response() {
    let backend = hinting_backend(Arc::new(Semaphore::new(0))).await;
    let lb = start(backend, "own");
    let url = format!("http://{}/now", lb.addr("web"));
    let curl = |version: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-si", "--max-time", "20", version, &url])
                .output()
                .expect("curl (installed by .ci/run)");
            assert!(out.status.success(), "curl {version}: {out:?}");
            String::from_utf8(out.stdout).expect("text")
        })
    };
    let out = curl("--http1.1").await.expect("curl");
    let lower = out.to_ascii_lowercase();
    let hints = lower.find("http/1.1 103 early hints\r\n").expect(&out);
    let style = lower
        .find("link: </style.css>; rel=preload; as=style\r\n")
        .expect(&out);
    let app = lower
        .find("link: </app.js>; rel=preload; as=script\r\n")
        .expect(&out);
    let ok = lower.find("http/1.1 200 ok\r\n").expect(&out);
    assert!(hints < style && style < app && app < ok, "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out}");

    let out = curl("--http1.0").await.expect("curl");
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(!out.contains("103"), "{out}");
}
