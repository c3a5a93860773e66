//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) end to end: hyper's HTTP/2 client sends
//! `CONNECT` with `:protocol websocket` through a real `autolb` (h2c and TLS with ALPN h2),
//! tokio-tungstenite speaks WebSocket over the stream, and real `autolb-echo` backends get
//! the HTTP/1.1 handshake (their `/ws` sends its name first, then echoes).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{self as t, https_config, TestCa};
use common::{backend_list, config, echo, set_cookie, Autolb, Client};
use futures_util::{SinkExt, StreamExt};
use http::header::{SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 connection over `io` that may open WebSockets: autolb's SETTINGS, which must
/// carry SETTINGS_ENABLE_CONNECT_PROTOCOL, have arrived.
async fn ready<I>(io: I) -> SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    let (enabled_tx, mut enabled) = tokio::sync::watch::channel(false);
    // The connection's frames are read by a task hyper spawns: look at the setting now and
    // then while driving the connection.
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tick.tick() => {
                    enabled_tx.send_replace(conn.is_extended_connect_protocol_enabled());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), enabled.wait_for(|on| *on))
        .await
        .expect("SETTINGS_ENABLE_CONNECT_PROTOCOL from autolb within 10s")
        .expect("the connection task");
    tx
}

async fn h2c(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    ready(tokio::net::TcpStream::connect(addr).await.expect("connect")).await
}

/// `CONNECT` with `:protocol` (RFC 8441) on `tx`: the response head, and the stream.
async fn connect(
    tx: &mut SendRequest<Full<Bytes>>,
    uri: &str,
    protocol: &'static str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Option<H2Ws>) {
    let mut req = http::Request::connect(uri)
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Full::new(Bytes::new())).expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .expect("an answer within 10s")
        .expect("an answer");
    if resp.status() != 200 {
        return (resp.into_parts().0, None);
    }
    let (head, body) = resp.into_parts();
    let upgraded = hyper::upgrade::on(http::Response::from_parts(head.clone(), body))
        .await
        .expect("the stream, upgraded");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (head, Some(ws))
}

async fn open(tx: &mut SendRequest<Full<Bytes>>, uri: &str, headers: &[(&str, &str)]) -> H2Ws {
    let (head, ws) = connect(tx, uri, "websocket", headers).await;
    assert_eq!(head.status, 200, "{head:?}");
    ws.expect("a WebSocket")
}

/// The next message that is not a ping or pong, within `secs`.
async fn next(ws: &mut H2Ws, secs: u64) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {secs}s"))
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

async fn text(ws: &mut H2Ws) -> String {
    match next(ws, 10).await {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn total_websockets(lb: &Autolb) -> u64 {
    let status: Value = common::get(lb.admin, "/loadbalancer/status").await.json();
    status["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["websockets"].as_u64())
        .sum()
}

/// Text, a 256 KiB binary message and a close handshake over one WebSocket.
async fn round_trip(ws: &mut H2Ws) {
    ws.send(Message::text("hello over h2")).await.expect("send");
    assert_eq!(next(ws, 10).await, Some(Message::text("hello over h2")));
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    assert_eq!(next(ws, 10).await, Some(Message::binary(big)));
    ws.close(None).await.expect("close");
    match next(ws, 10).await {
        Some(Message::Close(_)) | None => {}
        other => panic!("expected the close reply, got {other:?}"),
    }
}

#[tokio::test]
async fn websockets_over_h2c_and_tls_h2_reach_http1_backends() {
    let e = echo("ws-h2");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["a.test"]).write(dir.path(), "a")];
    let h2c_listener =
        "  - { name: plain, listen: \"127.0.0.1:0\", protocol: http, pool: web, h2c: true }\n";
    let lb = Autolb::start(&https_config(&certs, "", "", h2c_listener, &[e.addr]));

    // h2c (prior knowledge): several WebSockets and plain requests share one connection.
    let mut tx = h2c(lb.addr("plain")).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let (head, ws) = connect(&mut tx, "http://a.test/ws", "websocket", &[]).await;
        assert_eq!(head.status, 200);
        // The backend's HTTP/1.1 handshake headers stay on its side.
        assert!(head.headers.get(SEC_WEBSOCKET_ACCEPT).is_none(), "{head:?}");
        assert!(head.headers.get(UPGRADE).is_none(), "{head:?}");
        let mut ws = ws.expect("a WebSocket");
        assert_eq!(text(&mut ws).await, "ws-h2");
        sockets.push(ws);
    }
    let get = http::Request::get("http://a.test/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = t::reply(
        tx.send_request(get)
            .await
            .expect("GET beside the WebSockets"),
    )
    .await;
    assert_eq!((r.status, r.text()), (200, "ws-h2".to_string()));
    common::wait_until(10, "5 WebSockets in the status", || async {
        (total_websockets(&lb).await == 5).then_some(())
    })
    .await;
    for ws in &mut sockets {
        round_trip(ws).await;
    }
    common::wait_until(10, "the WebSockets to be counted closed", || async {
        (total_websockets(&lb).await == 0).then_some(())
    })
    .await;

    // TLS with ALPN h2.
    let s = t::connect(
        lb.addr("secure"),
        "a.test",
        &t::connector(&ca, &[b"h2"], false),
    )
    .await
    .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut tx = ready(s).await;
    let mut ws = open(&mut tx, "https://a.test/ws", &[]).await;
    assert_eq!(text(&mut ws).await, "ws-h2");
    round_trip(&mut ws).await;
}

#[tokio::test]
async fn other_connects_are_refused_and_never_reach_a_backend() {
    let e = echo("ws-h2");
    let yaml = config(
        1,
        ", h2c: true",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[e.addr], "")
        ),
    );
    let lb = Autolb::start(&yaml);
    let mut tx = h2c(lb.addr("web")).await;
    // An extended CONNECT for another protocol, and a classic CONNECT (a tunnel to an
    // authority): autolb is no forward proxy.
    let (head, ws) = connect(&mut tx, "http://a.test/chat", "connect-udp", &[]).await;
    assert_eq!(head.status, 405);
    assert!(ws.is_none());
    let classic = http::Request::connect("a.test:443")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = tx.send_request(classic).await.expect("an answer");
    assert_eq!(r.status(), 405);
    let requests: Value = common::get(lb.admin, "/loadbalancer/status").await.json();
    assert_eq!(
        requests["pools"][0]["backends"][0]["requests_total"].as_u64(),
        Some(0),
        "{requests}"
    );
    // The connection still opens WebSockets.
    let mut ws = open(&mut tx, "http://a.test/ws", &[]).await;
    assert_eq!(text(&mut ws).await, "ws-h2");
}

const TOKEN: &str = "h2-websocket-admin-token";
const SID: &str = "AUTOLB_SID";

#[tokio::test]
async fn sticky_h2_websockets_stay_pinned_and_close_with_1001_on_drain() {
    let base = 22_000 + (std::process::id() % 100) as u16 * 50;
    let yaml = format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\", token_env: AUTOLB_TEST_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web, h2c: true }}
pools:
  web:
    balance: round_robin
    sticky: {{ cookie: {{}} }}
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {base}-{hi}
      min: 1
      max: 2
      interval: 200ms
      target: {{ inflight_per_instance: 1000 }}
      scale_down: {{ stabilization: 1h }}
      drain_timeout: 4s
",
        echo = common::ECHO,
        hi = base + 49,
    );
    let lb = Autolb::start_with_env(
        &yaml,
        &[
            ("AUTOLB_TEST_TOKEN", TOKEN),
            ("AUTOLB_STICKY_SECRET", "h2-drain-secret-0123456789"),
        ],
    );
    let addr = lb.addr("web");
    common::scale_to(&lb, TOKEN, 2).await;
    common::wait_until(30, "two ready instances", || async {
        let ready = common::instances(&lb)
            .await
            .iter()
            .filter(|i| i["state"] == "ready")
            .count();
        (ready == 2).then_some(())
    })
    .await;
    // A session cookie for each instance (HTTP/1.1 GETs), then WebSockets over one HTTP/2
    // connection, each sent where its cookie says.
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..20 {
        let r = Client::connect(addr).await.get("/").await;
        if let Some((pair, _)) = set_cookie(&r.headers, SID) {
            cookies.entry(r.text()).or_insert(pair);
        }
        if cookies.len() == 2 {
            break;
        }
    }
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let mut tx = h2c(addr).await;
    let mut sockets = BTreeMap::new();
    for (name, cookie) in &cookies {
        for _ in 0..3 {
            let mut ws = open(&mut tx, "http://a.test/ws", &[("cookie", cookie)]).await;
            assert_eq!(&text(&mut ws).await, name, "pinned by its cookie");
            sockets
                .entry(name.clone())
                .or_insert_with(Vec::new)
                .push(ws);
        }
    }
    // Without a cookie, a WebSocket gets one (in the 200) naming where it went.
    let (head, ws) = connect(&mut tx, "http://a.test/ws", "websocket", &[]).await;
    let (pair, _) = set_cookie(&head.headers, SID).expect("a sticky cookie in the 200");
    let mut ws = ws.expect("a WebSocket");
    let name = text(&mut ws).await;
    let r = Client::connect(addr)
        .await
        .get_with("/", &[("cookie", &pair)])
        .await;
    assert_eq!(
        r.text(),
        name,
        "the 200's cookie names the WebSocket's backend"
    );

    common::scale_to(&lb, TOKEN, 1).await;
    let drained = common::wait_until(10, "an instance to drain", || async {
        common::instances(&lb)
            .await
            .into_iter()
            .find(|i| i["state"] == "draining")
            .and_then(|i| i["id"].as_str().map(String::from))
    })
    .await;
    let kept = cookies
        .keys()
        .find(|n| **n != drained)
        .expect("the other")
        .clone();
    // While draining, the pinned WebSockets still work; after drain_timeout they close with
    // 1001 and the other instance's stay open.
    let ws = &mut sockets.get_mut(&drained).expect("ws")[0];
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next(ws, 5).await, Some(Message::text("still here")));
    for ws in sockets.get_mut(&drained).expect("ws") {
        match next(ws, 15).await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    }
    for ws in sockets.get_mut(&kept).expect("ws") {
        ws.send(Message::text("unaffected")).await.expect("send");
        assert_eq!(next(ws, 5).await, Some(Message::text("unaffected")));
    }
    // The HTTP/2 connection outlived the drained instance's WebSockets.
    let mut ws = open(&mut tx, "http://a.test/ws", &[("cookie", &cookies[&kept])]).await;
    assert_eq!(text(&mut ws).await, kept);
}
