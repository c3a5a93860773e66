//! WebSocket proxying end to end: real tokio-tungstenite clients through a real `autolb` to
//! real `autolb-echo` instances (whose `/ws` first sends its name, then echoes).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{backend_list, config, echo, ws_connect, ws_next, ws_text, Autolb, Client};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn one_pool(addrs: &[std::net::SocketAddr], pool_extra: &str) -> String {
    config(
        2,
        "",
        &format!(
            "pools:\n  web:\n    balance: least_conn\n{pool_extra}    backends:\n{}",
            backend_list(addrs, "")
        ),
    )
}

async fn status(lb: &Autolb) -> Value {
    common::get(lb.admin, "/loadbalancer/status").await.json()
}

/// Open WebSockets per backend address, as `/loadbalancer/status` shows them.
async fn websockets(lb: &Autolb) -> Vec<(String, u64)> {
    status(lb).await["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["websockets"].as_u64().expect("websockets count"),
            )
        })
        .collect()
}

async fn total_websockets(lb: &Autolb) -> u64 {
    websockets(lb).await.iter().map(|(_, n)| n).sum()
}

/// The close frame's code, once the peer closes (within `secs`).
async fn close_code(ws: &mut common::Ws, secs: u64) -> Option<CloseCode> {
    match ws_next(ws, secs).await {
        Some(Message::Close(frame)) => frame.map(|f| f.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn text_binary_ping_close_and_a_1mb_message_pass_through() {
    let e = echo("ws-1");
    let lb = Autolb::start(&one_pool(&[e.addr], ""));
    let (mut ws, resp) = ws_connect(lb.addr("web"), "/ws", &[]).await;
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("sec-websocket-accept"));
    assert_eq!(ws_text(&mut ws).await, "ws-1");

    ws.send(Message::text("hello through autolb"))
        .await
        .expect("send");
    assert_eq!(
        ws_next(&mut ws, 10).await,
        Some(Message::text("hello through autolb"))
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(binary.clone()))
        .await
        .expect("send");
    assert_eq!(ws_next(&mut ws, 10).await, Some(Message::binary(binary)));
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send 1 MB");
    match ws_next(&mut ws, 20).await {
        Some(Message::Binary(b)) => assert!(b[..] == big[..], "1 MB echo differs"),
        other => panic!("expected the 1 MB echo, got {other:?}"),
    }
    // Pings reach the backend, which answers the pong.
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong within 10s");
    assert_eq!(&pong[..], b"are you there");

    // Counted in status and metrics while open.
    assert_eq!(websockets(&lb).await, vec![(e.addr.to_string(), 1)]);
    let metrics = common::get(lb.admin, "/metrics").await.text();
    let line = format!(
        "autolb_websocket_connections{{pool=\"web\",backend=\"{}\"}} 1",
        e.addr
    );
    assert!(metrics.contains(&line), "{metrics}");

    // A client close is answered by the backend, through autolb.
    ws.close(None).await.expect("close");
    assert!(matches!(
        ws_next(&mut ws, 10).await,
        Some(Message::Close(_)) | None
    ));
    common::wait_until(10, "the WebSocket count to drop", || async {
        (total_websockets(&lb).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn answers_other_than_101_stay_plain_http() {
    let e = echo("plain");
    let lb = Autolb::start(&one_pool(&[e.addr], ""));
    // An upgrade to a path that does not upgrade: a normal answer, and the connection keeps
    // serving HTTP.
    let mut c = Client::connect(lb.addr("web")).await;
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = c.get_with("/", &upgrade).await;
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let r = c.get_with("/ws", &upgrade[..2]).await;
    assert_eq!(r.status, 400, "no key: {}", r.text());
    let r = c.get("/echo").await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    // Other upgrades are not proxied: the backend sees a plain request.
    let r = c
        .get_with("/echo", &[("connection", "upgrade"), ("upgrade", "h2c")])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("upgrade").is_none());
    assert_eq!(total_websockets(&lb).await, 0);

    // The real thing still works, and tungstenite sees a failed handshake as plain HTTP.
    let (mut ws, _) = ws_connect(lb.addr("web"), "/ws", &[]).await;
    assert_eq!(ws_text(&mut ws).await, "plain");
    match common::try_ws_connect(lb.addr("web"), "/status/404", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected an HTTP error, got {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn a_thousand_concurrent_websockets_are_all_answered() {
    let backends = [echo("c-1"), echo("c-2")];
    let addrs: Vec<_> = backends.iter().map(|e| e.addr).collect();
    let lb = Autolb::start(&one_pool(&addrs, ""));
    let addr = lb.addr("web");
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            tokio::spawn(async move {
                let (mut ws, _) = ws_connect(addr, "/ws", &[]).await;
                let name = ws_text(&mut ws).await;
                let msg = format!("message {i}");
                ws.send(Message::text(msg.clone())).await.expect("send");
                assert_eq!(ws_next(&mut ws, 30).await, Some(Message::text(msg)));
                (name, ws)
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    // All 1000 are open at once, spread over both backends (least_conn counts them).
    let per_backend = websockets(&lb).await;
    assert_eq!(
        per_backend.iter().map(|(_, n)| n).sum::<u64>(),
        1000,
        "{per_backend:?}"
    );
    for (_, n) in &per_backend {
        assert!((400..=600).contains(n), "{per_backend:?}");
    }
    let c1 = open.iter().filter(|(n, _)| n == "c-1").count();
    assert!((400..=600).contains(&c1), "c-1 got {c1}");
    for (_, mut ws) in open {
        let _ = ws.close(None).await;
    }
    common::wait_until(20, "every WebSocket to close", || async {
        (total_websockets(&lb).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn idle_websockets_are_closed_with_1001() {
    let e = echo("idle");
    let lb = Autolb::start(&one_pool(
        &[e.addr],
        "    timeouts: { websocket_idle: 1s }\n",
    ));
    let (mut ws, _) = ws_connect(lb.addr("web"), "/ws", &[]).await;
    assert_eq!(ws_text(&mut ws).await, "idle");
    // Traffic keeps it open past the idle timeout.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text(format!("keep {i}")))
            .await
            .expect("send");
        assert_eq!(
            ws_next(&mut ws, 5).await,
            Some(Message::text(format!("keep {i}")))
        );
    }
    let quiet = Instant::now();
    assert_eq!(close_code(&mut ws, 10).await, Some(CloseCode::Away));
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    common::wait_until(10, "the idle WebSocket to be gone", || async {
        (total_websockets(&lb).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let e = echo("bye");
    let lb = Autolb::start(&one_pool(&[e.addr], ""));
    let (mut ws, _) = ws_connect(lb.addr("web"), "/ws", &[]).await;
    assert_eq!(ws_text(&mut ws).await, "bye");
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(lb.proc.pid() as i32, libc::SIGTERM);
    }
    assert_eq!(close_code(&mut ws, 10).await, Some(CloseCode::Away));
}

#[tokio::test]
async fn upgrade_requests_keep_their_websocket_headers() {
    // A backend in this process shows what autolb sent it.
    let backend = common::hyper_backend(|req| async move {
        let h = req.headers();
        let body = format!(
            "connection={:?} upgrade={:?} key={:?} proto={:?}",
            h.get("connection"),
            h.get("upgrade"),
            h.get("sec-websocket-key"),
            h.get("sec-websocket-protocol"),
        );
        http::Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    let lb = Autolb::start(&one_pool(&[backend], ""));
    let mut c = Client::connect(lb.addr("web")).await;
    let r = c
        .get_with(
            "/",
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-protocol", "chat"),
            ],
        )
        .await;
    assert_eq!(
        r.text(),
        "connection=Some(\"upgrade\") upgrade=Some(\"websocket\") \
         key=Some(\"dGhlIHNhbXBsZSBub25jZQ==\") proto=Some(\"chat\")"
    );
}

#[tokio::test]
async fn wss_through_an_https_listener_gets_a_secure_sticky_cookie() {
    use common::tls::{self as t, https_config, TestCa};
    let e = echo("tls-ws");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("ws CA");
    let certs = vec![ca.issue(&["ws.test"]).write(dir.path(), "ws")];
    let yaml = https_config(&certs, "", "", "", &[e.addr]).replace(
        "  web:\n    backends:",
        "  web:\n    sticky: {}\n    backends:",
    );
    let lb = Autolb::start(&yaml);
    let tls = t::connect(
        lb.addr("secure"),
        "ws.test",
        &t::connector(&ca, &[b"http/1.1"], false),
    )
    .await
    .expect("TLS handshake");
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async("wss://ws.test/ws", tls),
    )
    .await
    .expect("handshake within 10s")
    .expect("WebSocket handshake over TLS");
    let (_, cookie) = common::set_cookie(resp.headers(), "AUTOLB_SID").expect("sticky cookie");
    assert!(
        cookie.ends_with("; HttpOnly; SameSite=Lax; Secure"),
        "{cookie}"
    );
    match ws_next_any(&mut ws).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "tls-ws"),
        other => panic!("expected the name, got {other:?}"),
    }
    let big = vec![42u8; 300_000];
    ws.send(Message::binary(big.clone())).await.expect("send");
    match ws_next_any(&mut ws).await {
        Some(Message::Binary(b)) => assert!(b[..] == big[..]),
        other => panic!("expected the echo, got {other:?}"),
    }
    ws.close(None).await.expect("close");
}

/// The next data or close message of any WebSocket stream, within 10 s.
async fn ws_next_any<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message within 10s")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}
