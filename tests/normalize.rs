//! Path and Host normalization before routing, through the real binary: the spellings an
//! attacker tries against a path route and a host route reach the guarded pool (with the
//! normal form) or get 400, never the default pool; the backend sees what was routed (or,
//! with `forward_original`, what was sent); `escaped_slashes` and `merge_slashes` policies;
//! HTTP/2 authorities; the access log and `autolb_requests_normalized_total`.
//! (The differential test against nginx is `tests/normalize_nginx.rs`.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Autolb;

/// A backend answering `POOL PATH-AS-RECEIVED` with the Host it got in `x-host`.
async fn named_backend(pool: &'static str) -> SocketAddr {
    common::hyper_backend(move |req| async move {
        let host = req
            .headers()
            .get("host")
            .map(|h| h.as_bytes().to_vec())
            .unwrap_or_default();
        let body = format!("{pool} {}", req.uri());
        http::Response::builder()
            .header("x-host", host)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    })
    .await
}

/// Routes `host: admin.example -> hostadmin`, `/admin -> guarded`, default `web`.
async fn start(listener_extra: &str, access_log: &str) -> Autolb {
    let (web, guarded, hostadmin) = (
        named_backend("web").await,
        named_backend("guarded").await,
        named_backend("hostadmin").await,
    );
    let rest = format!(
        "{access_log}routes:
  - {{ host: admin.example, pool: hostadmin }}
  - {{ path_prefix: /admin, pool: guarded }}
pools:
  web: {{ backends: [{{ address: \"{web}\" }}] }}
  guarded: {{ backends: [{{ address: \"{guarded}\" }}] }}
  hostadmin: {{ backends: [{{ address: \"{hostadmin}\" }}] }}
"
    );
    Autolb::start(&common::config(1, listener_extra, &rest))
}

/// One raw HTTP/1.1 request (so that any spelling goes out exactly as written): status,
/// body and the `x-host` the backend saw.
async fn raw(addr: SocketAddr, target: &str, host: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answer within 20s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let x_host = head
        .lines()
        .find_map(|l| l.strip_prefix("x-host: "))
        .unwrap_or("")
        .to_string();
    (status, body.to_string(), x_host)
}

#[tokio::test]
async fn no_spelling_of_a_guarded_path_escapes_its_route() {
    let lb = start("", "").await;
    let addr = lb.addr("web");
    // Each reaches `guarded` with the normal form `/admin/x`.
    for target in [
        "/admin/x",
        "/x/../admin/x",
        "//admin/x",
        "/./admin/x",
        "/%61dmin/x",
        "/x/%2e%2e/admin/x",
        "/x/%2E%2E/admin//x",
        "///admin/./x",
        "/%2e/admin/x/y/..",
    ] {
        let (status, body, _) = raw(addr, target, "www.example").await;
        assert_eq!(status, 200, "{target}: {body}");
        let want = if target.ends_with("..") {
            "guarded /admin/x/"
        } else {
            "guarded /admin/x"
        };
        assert_eq!(body, want, "{target}");
    }
    // Queries are not paths: kept as sent.
    let (_, body, _) = raw(addr, "/x/../admin?a=/../%2e%2e", "www.example").await;
    assert_eq!(body, "guarded /admin?a=/../%2e%2e");
    // ... or are refused.
    for target in [
        "/admin%2fx",
        "/x%2F..%2Fadmin",
        "/x/..%5Cadmin",
        "/x\\..\\admin",
        "/..",
        "/x/../../admin",
        "/%2e%2e/admin",
        "/public/..;/admin/x",
        "/admin%zz",
        "/admin%00",
        "/admin%",
    ] {
        let (status, body, _) = raw(addr, target, "www.example").await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("\"error\""), "{target}: {body}");
    }
    // Paths are case-sensitive and the prefix is a plain prefix.
    assert_eq!(raw(addr, "/ADMIN/x", "www.example").await.1, "web /ADMIN/x");
    assert_eq!(
        raw(addr, "/administrator", "w").await.1,
        "guarded /administrator"
    );
    assert_eq!(raw(addr, "/admin;x", "w").await.1, "guarded /admin;x");
    assert_eq!(raw(addr, "/a%3bb", "w").await.1, "web /a%3Bb");
}

#[tokio::test]
async fn no_spelling_of_a_guarded_host_escapes_its_route() {
    let lb = start("", "").await;
    let addr = lb.addr("web");
    for (host, seen) in [
        ("admin.example", "admin.example"),
        ("admin.example.", "admin.example"),
        ("ADMIN.Example", "admin.example"),
        ("Admin.Example.:8080", "admin.example:8080"),
    ] {
        let (status, body, x_host) = raw(addr, "/x", host).await;
        assert_eq!((status, body.as_str()), (200, "hostadmin /x"), "{host}");
        assert_eq!(x_host, seen, "the backend sees the normal Host");
    }
    for host in [
        "user@admin.example",
        "admin.example, evil",
        "admin.example,evil",
        "admin..example",
        "admin.example/x",
        "admin.example:x",
        "admin.example:",
        "[::1",
        "",
    ] {
        let (status, body, _) = raw(addr, "/x", host).await;
        assert_eq!(status, 400, "Host {host:?}: {body}");
    }
    // Absolute-form: the authority is normalized too and must agree with Host.
    let (status, body, _) = raw(addr, "http://Admin.Example./x", "admin.Example.").await;
    assert_eq!((status, body.as_str()), (200, "hostadmin /x"));
    let (status, _, _) = raw(addr, "http://user@admin.example/x", "admin.example").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn http2_authorities_and_paths_are_normalized() {
    let lb = start(", h2c: true", "").await;
    let tcp = tokio::net::TcpStream::connect(lb.addr("web"))
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for (uri, status, want) in [
        ("http://ADMIN.example./a/../b", 200, "hostadmin /b"),
        ("http://www.example/x/%2E%2E/admin", 200, "guarded /admin"),
        ("http://www.example/caf\u{e9}/", 200, "web /caf%C3%A9/"),
        ("http://www.example/admin%2F", 400, ""),
        ("http://user@admin.example/", 400, ""),
    ] {
        let req = http::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = tx.send_request(req).await.expect("response");
        let r = common::tls::reply(resp).await;
        assert_eq!(r.status, status, "{uri}: {}", r.text());
        if status == 200 {
            assert_eq!(r.text(), want, "{uri}");
        }
    }
}

#[tokio::test]
async fn policies_keep_decode_merge_and_forward_original() {
    let lb = start(
        ", normalize: { escaped_slashes: keep, merge_slashes: false }",
        "",
    )
    .await;
    let addr = lb.addr("web");
    assert_eq!(raw(addr, "/admin%2fx", "w").await.1, "guarded /admin%2Fx");
    assert_eq!(
        raw(addr, "/x\\..\\admin", "w").await.1,
        "web /x%5C..%5Cadmin"
    );
    assert_eq!(raw(addr, "//admin/x", "w").await.1, "web //admin/x");
    assert_eq!(raw(addr, "/x/..//admin", "w").await.1, "web //admin");
    drop(lb);

    let lb = start(", normalize: { escaped_slashes: decode }", "").await;
    let addr = lb.addr("web");
    assert_eq!(raw(addr, "/x%2F..%2Fadmin", "w").await.1, "guarded /admin");
    assert_eq!(
        raw(addr, "/x\\..\\admin\\y", "w").await.1,
        "guarded /admin/y"
    );
    drop(lb);

    // Routed on the normal form, forwarded as sent.
    let lb = start(", normalize: { forward_original: true }", "").await;
    let addr = lb.addr("web");
    assert_eq!(
        raw(addr, "/x/%2e%2e/admin//y?q", "w").await.1,
        "guarded /x/%2e%2e/admin//y?q"
    );
    assert_eq!(raw(addr, "/%2e%2e/admin", "w").await.0, 400);
}

#[tokio::test]
async fn access_log_and_metric_show_rewrites_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let lb = start("", &format!("access_log: {{ path: {log:?} }}\n")).await;
    let addr = lb.addr("web");
    let metric = |result: &'static str| {
        let lb = &lb;
        async move {
            common::tls::metric(
                lb,
                &format!(
                    "autolb_requests_normalized_total{{listener=\"web\",result=\"{result}\"}}"
                ),
            )
            .await
        }
    };
    assert_eq!(
        (metric("rewritten").await, metric("rejected").await),
        (0, 0)
    );
    assert_eq!(raw(addr, "/admin/x", "w").await.0, 200);
    assert_eq!(raw(addr, "/x/../admin/x?q=1", "w").await.0, 200);
    assert_eq!(raw(addr, "/x/../../admin", "w").await.0, 400);
    assert_eq!(raw(addr, "/", "user@admin.example").await.0, 400);
    assert_eq!(
        (metric("rewritten").await, metric("rejected").await),
        (1, 2)
    );

    let lines: Vec<serde_json::Value> = common::wait_until(10, "4 log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    let fields = |l: &serde_json::Value| {
        (
            l["path"].as_str().unwrap_or("").to_string(),
            l["original_path"].as_str().map(str::to_string),
            l["status"].as_u64().unwrap_or(0),
            l["pool"].as_str().map(str::to_string),
        )
    };
    assert_eq!(
        fields(&lines[0]),
        ("/admin/x".into(), None, 200, Some("guarded".into()))
    );
    assert_eq!(
        fields(&lines[1]),
        (
            "/admin/x?q=1".into(),
            Some("/x/../admin/x?q=1".into()),
            200,
            Some("guarded".into())
        )
    );
    assert_eq!(
        fields(&lines[2]),
        ("/x/../../admin".into(), None, 400, None)
    );
    assert_eq!(lines[3]["status"], 400);
}
