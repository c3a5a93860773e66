//! gRPC-Web through autolb (`grpc_web: true`): requests as a browser's gRPC-Web library
//! sends them over HTTP/1.1 (binary and base64 text, `x-grpc-web: 1`) to a tonic gRPC
//! server behind an HTTP/2 pool; the answer's frames and trailers (a 0x80 frame) as
//! gRPC-Web, Trailers-Only errors, and CORS preflights for the configured origins.

mod common;
mod grpc_support;

use base64::Engine as _;
use bytes::{Buf, Bytes};
use http_body_util::Full;

use common::{backend_list, Autolb, Client};
use grpc_support::{frame, msg, Msg};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The messages and the trailer block of a gRPC-Web body.
fn web_frames(mut body: Bytes) -> (Vec<Msg>, Option<String>) {
    let mut messages = Vec::new();
    let mut trailers = None;
    while body.remaining() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            trailers = Some(String::from_utf8(payload.to_vec()).expect("trailer text"));
        } else {
            messages.push(prost::Message::decode(payload).expect("message"));
        }
    }
    assert!(body.is_empty(), "whole frames only");
    (messages, trailers)
}

fn web_request(
    path: &str,
    ct: &str,
    body: Bytes,
    origin: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post(path)
        .header("host", "grpc.test")
        .header("content-type", ct)
        .header("x-grpc-web", "1")
        .header("accept", ct);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.body(Full::new(body)).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_reach_a_grpc_server() {
    let server = grpc_support::server("s1").await;
    let list = backend_list(&[server.addr], "");
    let lb = Autolb::start(&common::config(
        2,
        "",
        &format!(
            "pools:\n  web:\n    protocol: h2\n    grpc_web: true\n    \
             grpc_web_origins: [\"https://app.test\"]\n    backends:\n{list}"
        ),
    ));
    let mut c = Client::connect(lb.addr("web")).await;

    // Binary: one message and the trailers as the last frame.
    let r = c
        .request(web_request(
            "/test.Echo/Unary",
            "application/grpc-web+proto",
            frame(&msg("web")),
            Some("https://app.test"),
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/grpc-web+proto");
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.test");
    assert!(r.headers["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .contains("grpc-status"));
    let (messages, trailers) = web_frames(r.body.clone());
    assert_eq!(messages, vec![msg("echo:web")]);
    let trailers = trailers.expect("a trailer frame");
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");

    // Text: base64 both ways; a server stream's three messages, then its trailers.
    let m = Msg {
        text: "t".into(),
        count: 3,
        delay_ms: 0,
    };
    let r = c
        .request(web_request(
            "/test.Echo/Stream",
            "application/grpc-web-text",
            Bytes::from(B64.encode(frame(&m))),
            None,
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc-web-text");
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let decoded = B64.decode(&r.body).expect("base64 body");
    let (messages, trailers) = web_frames(Bytes::from(decoded));
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["t-0", "t-1", "t-2"]);
    assert!(trailers.expect("trailers").contains("grpc-status: 0"));

    // A failed call (Trailers-Only from the backend): the status in the headers.
    let r = c
        .request(web_request(
            "/test.Echo/Unary",
            "application/grpc-web",
            frame(&msg("fail")),
            None,
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "5");
    assert_eq!(r.headers["grpc-message"], "no%20such%20thing");

    // CORS preflights: the configured origin, and another one.
    let preflight = |origin: &'static str| {
        http::Request::options("/test.Echo/Unary")
            .header("host", "grpc.test")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let r = c.request(preflight("https://app.test")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.test");
    assert_eq!(
        r.headers["access-control-allow-headers"],
        "content-type,x-grpc-web"
    );
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    let r = c.request(preflight("https://evil.test")).await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    // Preflights never reach the backend; the three calls did.
    assert_eq!(server.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_can_be_set_on_one_route_of_a_grpc_pool() {
    let server = grpc_support::server("s1").await;
    let list = backend_list(&[server.addr], "");
    // gRPC-Web on the host browsers use; the pool itself (and its other route) plain gRPC.
    let lb = Autolb::start(&common::config(
        2,
        "",
        &format!(
            "routes:\n  - {{ host: web.test, pool: grpc, grpc_web: true, \
             grpc_web_origins: [\"https://app.test\"] }}\n  - {{ host: grpc.test, pool: grpc }}\n\
             pools:\n  grpc:\n    protocol: h2\n    backends:\n{list}  web:\n    backends:\n{list}"
        ),
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    let mut req = web_request(
        "/test.Echo/Unary",
        "application/grpc-web+proto",
        frame(&msg("route")),
        Some("https://app.test"),
    );
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("web.test"));
    let r = c.request(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/grpc-web+proto");
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.test");
    let (messages, trailers) = web_frames(r.body.clone());
    assert_eq!(messages, vec![msg("echo:route")]);
    assert!(trailers.expect("trailers").contains("grpc-status: 0"));

    // The other route of the same pool does not translate: a gRPC-Web request reaches the
    // gRPC server as it is, and the server does not take its content type.
    let r = c
        .request(web_request(
            "/test.Echo/Unary",
            "application/grpc-web+proto",
            frame(&msg("plain")),
            Some("https://app.test"),
        ))
        .await;
    assert_ne!(r.headers["content-type"], "application/grpc-web+proto");
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // A preflight on the gRPC-Web route is answered by autolb.
    let preflight = http::Request::options("/test.Echo/Unary")
        .header("host", "web.test")
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(c.request(preflight).await.status, 204);
}

#[test]
fn grpc_web_on_a_route_needs_an_h2_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autolb.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - { name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }\n\
         routes:\n  - { path_prefix: /api, pool: web, grpc_web: true }\n\
         pools:\n  web:\n    backends: [ { address: \"127.0.0.1:1\" } ]\n",
    )
    .expect("write");
    let (code, _out, err) = common::check(&path);
    assert_ne!(code, 0);
    assert!(
        err.contains("autolb.yaml:4:47: grpc_web needs protocol: h2"),
        "{err}"
    );
}
