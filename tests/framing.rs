//! Request smuggling and framing (RFC 9112) through the real autolb, on raw sockets: each
//! hostile request gets 400 and a backend that records every byte it receives sees none;
//! a backend's broken response framing gets 502.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{backend_list, config, raw_backend, Autolb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend recording every byte it receives; it answers each request head with 200.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = raw_backend(move |mut stream| {
        let log = log.clone();
        async move {
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                log.lock().expect("log").extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                if pending.windows(4).any(|w| w == b"\r\n\r\n") {
                    pending.clear();
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
            }
        }
    })
    .await;
    (addr, seen)
}

/// Send `raw` on a new connection; what autolb answers until it closes (at most 5 s).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn start(backend: SocketAddr) -> Autolb {
    Autolb::start(&config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[backend], "")
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_request_framing_is_refused_before_any_backend() {
    let (backend, seen) = recording_backend().await;
    let lb = start(backend);
    let addr = lb.addr("web");
    let post = "POST / HTTP/1.1\r\nHost: a\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL + TE",
            format!("{post}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE + CL",
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ),
        (
            "duplicate CL",
            format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "differing CL",
            format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "CL list",
            format!("{post}Content-Length: 5, 5\r\n\r\nhello"),
        ),
        ("CL +5", format!("{post}Content-Length: +5\r\n\r\nhello")),
        ("CL 0x5", format!("{post}Content-Length: 0x5\r\n\r\nhello")),
        ("CL empty", format!("{post}Content-Length: \r\n\r\n")),
        (
            "CL overflow",
            format!("{post}Content-Length: 99999999999999999999999\r\n\r\n"),
        ),
        (
            "TE chunked, chunked",
            format!("{post}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE gzip, chunked",
            format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE chunked, gzip",
            format!("{post}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE identity",
            format!("{post}Transfer-Encoding: identity\r\n\r\n"),
        ),
        (
            "TE case",
            format!("{post}Transfer-Encoding: cHuNkEd\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE vertical tab",
            format!("{post}Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE xchunked",
            format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE twice",
            format!(
                "{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE space before colon",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE as obs-fold",
            format!("{post}X-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "chunk size overflow",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"),
        ),
        (
            "chunk size not hex",
            format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n"),
        ),
        (
            "chunk ext NUL",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n1;a\x00b\r\nx\r\n0\r\n\r\n"),
        ),
        (
            "chunk ext bare LF",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n"),
        ),
        (
            "chunk data without CRLF",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n"),
        ),
        ("bare LF lines", "GET / HTTP/1.1\nHost: a\n\n".into()),
        (
            "bare LF in field",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n".into(),
        ),
        (
            "bare CR in field",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n".into(),
        ),
        (
            "NUL in field value",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".into(),
        ),
        (
            "whitespace before colon",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n".into(),
        ),
        (
            "tab before colon",
            "GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n".into(),
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  continued\r\n\r\n".into(),
        ),
        ("method with (", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n".into()),
        ("method with @", "GE@T / HTTP/1.1\r\nHost: a\r\n\r\n".into()),
        (
            "absolute-form vs Host",
            "GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        ),
        (
            "duplicate Host",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
        ),
        ("no Host on 1.1", "GET / HTTP/1.1\r\nX: y\r\n\r\n".into()),
        ("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n".into()),
    ];
    for (name, raw) in &cases {
        let answer = exchange(addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: got {answer:?}");
    }
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.is_empty(),
        "backend received {:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_smuggling_reaches_the_backend_as_one_request_only() {
    let (backend, seen) = recording_backend().await;
    let lb = start(backend);
    let answer = exchange(
        lb.addr("web"),
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer:?}");
    let seen = String::from_utf8_lossy(&seen.lock().expect("seen")).into_owned();
    assert!(seen.starts_with("GET /first HTTP/1.1\r\n"), "{seen:?}");
    assert!(
        !seen.contains("/x") && !seen.contains("smuggled"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_pass_exactly() {
    let (backend, seen) = recording_backend().await;
    let lb = start(backend);
    let answer = exchange(
        lb.addr("web"),
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"v\"\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let seen = String::from_utf8_lossy(&seen.lock().expect("seen")).into_owned();
    assert!(seen.starts_with("POST /up HTTP/1.1\r\n"), "{seen:?}");
    assert!(seen.contains("hello"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_response_framing_from_a_backend_is_a_502() {
    let answers: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 2\r\n\r\nok",
    ];
    for answer in answers {
        let backend = raw_backend(move |mut stream| async move {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            // Bounded: one head, then the canned answer.
            for _ in 0..64 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        })
        .await;
        let lb = Autolb::start(&config(
            1,
            "",
            &format!(
                "pools:\n  web:\n    retries: 0\n    backends:\n{}",
                backend_list(&[backend], "")
            ),
        ));
        let got = exchange(
            lb.addr("web"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 502"),
            "{:?}: got {got:?}",
            String::from_utf8_lossy(answer)
        );
    }
}
