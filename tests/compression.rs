//! Compression end to end: gzip and brotli negotiated from Accept-Encoding and streamed
//! (decoded back here), route settings over pool settings, responses that must not be
//! compressed (encoded, tiny, other types, no-transform, HEAD, WebSocket), a streamed
//! response flushed while the backend pauses, and the access log's view of it.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Autolb, Client};

fn page() -> Vec<u8> {
    (0..2000)
        .flat_map(|i| format!("<p>paragraph {i}: lorem ipsum dolor sit amet</p>\n").into_bytes())
        .collect()
}

/// A backend answering by path suffix: `/page` (HTML with an ETag), `/big` (3 MB of text),
/// `/tiny`, `/png`, `/encoded` (already gzip), `/notransform`.
async fn backend() -> SocketAddr {
    common::hyper_backend(|req: http::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let (ct, body, extra): (&str, Vec<u8>, Option<(&str, &str)>) = if path.ends_with("/page") {
            ("text/html; charset=utf-8", page(), Some(("etag", "\"v1\"")))
        } else if path.ends_with("/big") {
            ("text/plain", page().repeat(30), None)
        } else if path.ends_with("/tiny") {
            ("text/plain", vec![b'a'; 100], None)
        } else if path.ends_with("/png") {
            ("image/png", page(), None)
        } else if path.ends_with("/encoded") {
            ("text/plain", page(), Some(("content-encoding", "gzip")))
        } else if path.ends_with("/notransform") {
            (
                "text/plain",
                page(),
                Some(("cache-control", "no-transform")),
            )
        } else {
            ("text/plain", b"not found".to_vec(), None)
        };
        let mut b = http::Response::builder().header("content-type", ct);
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::from(body))).expect("response")
    })
    .await
}

/// A raw HTTP/1.1 backend streaming `event 1`, then (after `pause`) `event 2`, chunked, as
/// text/event-stream; `second_sent` is set just before the second event goes out.
async fn events_backend(pause: Duration, second_sent: Arc<AtomicBool>) -> SocketAddr {
    common::raw_backend(move |mut stream| {
        let second_sent = second_sent.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
            let first = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}",
                chunk("data: event 1\n\n")
            );
            if stream.write_all(first.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
            second_sent.store(true, Ordering::SeqCst);
            let rest = format!("{}0\r\n\r\n", chunk("data: event 2\n\n"));
            let _ = stream.write_all(rest.as_bytes()).await;
        }
    })
    .await
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
        other => panic!("unexpected encoding {other}"),
    }
    .expect("decode");
    out
}

struct Setup {
    lb: Autolb,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _echo: common::Echo,
}

async fn setup(events: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let web = backend().await;
    let echo = common::echo("ws-backend");
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
access_log: {{ path: {log:?} }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
routes:
  - {{ path_prefix: /gz/, pool: web, compress: {{ algorithms: [gzip], types: [text/*], level: 1, min_size: 1 }} }}
  - {{ path_prefix: /events, pool: events, compress: {{ types: [text/event-stream], algorithms: [gzip] }} }}
  - {{ path_prefix: /ws, pool: sockets }}
pools:
  web:
    compress: {{ min_size: 1000 }}
    backends:
      - {{ address: \"{web}\" }}
  events:
    backends:
      - {{ address: \"{events}\" }}
  sockets:
    compress: {{ types: [text/*, application/json] }}
    backends:
      - {{ address: \"{ws}\" }}
",
        ws = echo.addr,
    );
    Setup {
        lb: Autolb::start(&yaml),
        log,
        _dir: dir,
        _echo: echo,
    }
}

async fn unused_events() -> SocketAddr {
    events_backend(Duration::ZERO, Arc::default()).await
}

#[tokio::test]
async fn brotli_and_gzip_are_negotiated_streamed_and_decodable() {
    let s = setup(unused_events().await).await;
    let mut c = Client::connect(s.lb.addr("web")).await;
    let original = page();

    let r = c
        .get_with("/page", &[("accept-encoding", "gzip, deflate, br")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-encoding"], "br");
    assert!(r.headers.get("content-length").is_none());
    assert!(r
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v == "Accept-Encoding"));
    assert_eq!(r.headers["etag"], "W/\"v1\"");
    assert!(r.body.len() * 5 < original.len(), "{} bytes", r.body.len());
    assert_eq!(decode("br", &r.body), original);

    let r = c.get_with("/page", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &r.body), original);

    // Without Accept-Encoding: as the backend sent it, but caches are told it varies.
    let r = c.get("/page").await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(
        r.headers["content-length"],
        original.len().to_string().as_str()
    );
    assert!(r
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v == "Accept-Encoding"));
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert_eq!(r.body, original);

    // 3 MB, streamed through the encoder.
    let r = c
        .get_with("/big", &[("accept-encoding", "br;q=0.5, gzip;q=0.9")])
        .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &r.body), page().repeat(30));

    // The access log has the coding and the bytes that went out.
    let text = common::wait_until(10, "4 log lines", || async {
        let t = std::fs::read_to_string(&s.log).unwrap_or_default();
        (t.lines().count() >= 4).then_some(t)
    })
    .await;
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or("")).expect("JSON");
    assert_eq!(first["encoding"], "br");
    assert!(first["bytes"]
        .as_u64()
        .is_some_and(|b| b > 0 && (b as usize) < original.len() / 5));
    let third: serde_json::Value =
        serde_json::from_str(text.lines().nth(2).unwrap_or("")).expect("JSON");
    assert_eq!(third["encoding"], serde_json::Value::Null);
    assert_eq!(third["bytes"], original.len() as u64);
}

#[tokio::test]
async fn what_must_not_be_compressed_is_not() {
    let s = setup(unused_events().await).await;
    let mut c = Client::connect(s.lb.addr("web")).await;
    let br = [("accept-encoding", "br, gzip")];
    for path in ["/tiny", "/png", "/notransform"] {
        let r = c.get_with(path, &br).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.headers.get("content-encoding").is_none(),
            "{path} compressed"
        );
        assert!(r.headers.get("content-length").is_some(), "{path}");
    }
    // Already encoded by the backend: passed through untouched.
    let r = c.get_with("/encoded", &br).await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.body, page());
    // HEAD: the identity headers.
    let head = http::Request::head("/page")
        .header("host", "x")
        .header("accept-encoding", "br")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = c.request(head).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(
        r.headers["content-length"],
        page().len().to_string().as_str()
    );
    // A client that refuses everything but identity.
    let r = c
        .get_with(
            "/page",
            &[("accept-encoding", "identity, br;q=0, gzip;q=0")],
        )
        .await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(r.body, page());
}

#[tokio::test]
async fn a_route_setting_wins_over_its_pool() {
    let s = setup(unused_events().await).await;
    let mut c = Client::connect(s.lb.addr("web")).await;
    // The route offers gzip only, from 1 byte on: br is not used, /tiny is compressed.
    let r = c
        .get_with("/gz/page", &[("accept-encoding", "br, gzip")])
        .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &r.body), page());
    let r = c
        .get_with("/gz/tiny", &[("accept-encoding", "br, gzip")])
        .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(decode("gzip", &r.body), vec![b'a'; 100]);
    let r = c.get_with("/gz/tiny", &[("accept-encoding", "br")]).await;
    assert!(r.headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn websockets_through_a_compressing_pool_are_untouched() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = setup(unused_events().await).await;
    let (mut ws, resp) =
        common::ws_connect(s.lb.addr("web"), "/ws", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(common::ws_text(&mut ws).await, "ws-backend");
    let text = "hello hello hello hello hello hello hello hello".repeat(50);
    ws.send(Message::text(text.clone())).await.expect("send");
    match common::ws_next(&mut ws, 10).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[tokio::test]
async fn a_paused_stream_is_flushed_so_clients_see_events_at_once() {
    let second_sent = Arc::new(AtomicBool::new(false));
    let events = events_backend(Duration::from_millis(1500), second_sent.clone()).await;
    let s = setup(events).await;
    let stream = tokio::net::TcpStream::connect(s.lb.addr("web"))
        .await
        .expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/events")
        .header("host", "x")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = Instant::now();
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut first_seen = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame())
        .await
        .expect("the stream within 10s")
    {
        let frame = frame.expect("frame");
        if let Some(d) = frame.data_ref() {
            decoder.write_all(d).expect("gunzip");
            decoder.flush().expect("gunzip");
        }
        let text = String::from_utf8_lossy(decoder.get_ref()).into_owned();
        if first_seen.is_none() && text.contains("data: event 1") {
            first_seen = Some((started.elapsed(), second_sent.load(Ordering::SeqCst)));
        }
    }
    let out = decoder.finish().expect("gzip trailer");
    assert_eq!(out, b"data: event 1\n\ndata: event 2\n\n");
    let (at, second_already_sent) = first_seen.expect("event 1 decoded");
    assert!(
        !second_already_sent,
        "event 1 was held back until event 2 ({at:?})"
    );
    assert!(at < Duration::from_millis(1200), "{at:?}");
}
