//! TLS termination and HTTP/2 through the real `autolb`: SNI with wildcards and strict_sni,
//! TLS versions, ALPN h2 with many concurrent streams, h2c, certificate hot reload (good and
//! bad), redirect and HSTS, TLS/mTLS/h2 to backends, and curl where it is installed.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::tls::{self as t, TestCa};
use common::{echo, Autolb};
use http_body_util::Full;

/// One https listener `secure` (pool `web`) with `certs`, plus `extra` YAML (listeners
/// first, then top-level keys) and the backends of `web`.
fn https_config(
    certs: &[(PathBuf, PathBuf)],
    tls_extra: &str,
    listener_extra: &str,
    more_listeners: &str,
    backends: &[SocketAddr],
) -> String {
    let pairs: String = certs
        .iter()
        .map(|(c, k)| format!("        - {{ cert: {c:?}, key: {k:?} }}\n"))
        .collect();
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: secure
    listen: \"127.0.0.1:0\"
    protocol: https
    pool: web
{listener_extra}    tls:
      certificates:
{pairs}{tls_extra}{more_listeners}pools:
  web:
    backends:
{}",
        common::backend_list(backends, "")
    )
}

/// A Prometheus sample of the admin `/metrics` (0 when absent).
async fn metric(lb: &Autolb, sample: &str) -> u64 {
    let text = common::get(lb.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `cond` every 100 ms for at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn sni_picks_the_certificate_by_name_and_wildcard_and_strict_sni_refuses() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let (a, b, w) = (
        ca.issue(&["a.test"]),
        ca.issue(&["b.test", "www.b.test"]),
        ca.issue(&["*.wild.test"]),
    );
    let certs = vec![
        a.write(dir.path(), "a"),
        b.write(dir.path(), "b"),
        w.write(dir.path(), "w"),
    ];
    let strict = format!(
        "  - name: strict
    listen: \"127.0.0.1:0\"
    protocol: https
    pool: web
    tls:
      certificates: [{{ cert: {:?}, key: {:?} }}]
      strict_sni: true
",
        certs[0].0, certs[0].1
    );
    let lb = Autolb::start(&https_config(&certs, "", "", &strict, &[e.addr]));
    let addr = lb.addr("secure");
    for (sni, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("WWW.B.test", &b),
        ("x.wild.test", &w),
        ("deep.x.wild.test", &a),
        ("unknown.test", &a),
        ("127.0.0.1", &a),
    ] {
        let got = t::presented_for(addr, sni).await.expect("handshake");
        assert!(got == want.der, "{sni}: wrong certificate");
    }
    // A verifying client (TLS 1.3, and TLS 1.2 only) gets its answer through the proxy.
    for tls12 in [false, true] {
        let s = t::connect(addr, "x.wild.test", &t::connector(&ca, &[], tls12))
            .await
            .expect("verified handshake");
        let r = t::get1(&mut t::h1(s).await, "x.wild.test", "/echo").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    }
    assert!(metric(&lb, "autolb_tls_handshakes_total{listener=\"secure\",version=\"TLSv1.2\"}").await >= 1);
    assert!(metric(&lb, "autolb_tls_handshakes_total{listener=\"secure\",version=\"TLSv1.3\"}").await >= 8);

    let strict = lb.addr("strict");
    assert!(t::presented_for(strict, "a.test").await.is_ok());
    assert!(t::presented_for(strict, "unknown.test").await.is_err());
    assert!(t::presented_for(strict, "127.0.0.1").await.is_err(), "no SNI");
    let refused = "autolb_tls_handshake_errors_total{listener=\"strict\",reason=\"no_certificate\"}";
    assert!(eventually(10, || async { metric(&lb, refused).await >= 2 }).await);
}

#[tokio::test]
async fn alpn_h2_answers_many_concurrent_streams_on_one_connection() {
    let (e1, e2) = (echo("e1"), echo("e2"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["a.test"]).write(dir.path(), "a")];
    let lb = Autolb::start(&https_config(&certs, "", "", "", &[e1.addr, e2.addr]));
    let s = t::connect(lb.addr("secure"), "a.test", &t::connector(&ca, &[b"h2", b"http/1.1"], false))
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tx = t::h2(s).await;

    // More streams than the server allows at once (128): the client queues the rest.
    let requests = (0..300).map(|i| {
        let mut tx = tx.clone();
        async move {
            let req = http::Request::get(format!("https://a.test/delay/{}", 20 + i % 30))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = tx.send_request(req).await.expect("response");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            t::reply(resp).await
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(requests))
        .await
        .expect("all streams answered within 60s");
    assert_eq!(replies.len(), 300);
    assert!(replies.iter().all(|r| r.status == 200));
    let names: std::collections::BTreeSet<String> = replies.iter().map(|r| r.text()).collect();
    assert_eq!(names.len(), 2, "both backends used: {names:?}");

    // The HTTP/1.1 backend sees an ordinary request: Host from :authority, cookies joined.
    let mut tx = tx.clone();
    let req = http::Request::post("https://a.test/echo")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .expect("request");
    let r = t::reply(tx.send_request(req).await.expect("response")).await;
    let j = r.json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["body_length"], 100_000);
    assert_eq!(j["headers"]["host"], "a.test");
    assert_eq!(j["headers"]["cookie"], "a=1; b=2");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_share_an_h2c_listener() {
    let e = echo("e");
    let pools = format!("pools:\n  web:\n    backends:\n{}", common::backend_list(&[e.addr], ""));
    let lb = Autolb::start(&common::config(1, ", h2c: true", &pools));
    let tcp = tokio::net::TcpStream::connect(lb.addr("web")).await.expect("connect");
    let mut tx = t::h2(tcp).await;
    let req = http::Request::get(format!("http://{}/echo", lb.addr("web")))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let r = t::reply(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    assert_eq!(common::get(lb.addr("web"), "/").await.text(), "e");
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_on_the_next_handshake() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    let (cert, key) = one.write(dir.path(), "a");
    let lb = Autolb::start(&https_config(&[(cert.clone(), key.clone())], "", "", "", &[e.addr]));
    let addr = lb.addr("secure");
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);
    let mut open = t::h1(t::connect(addr, "a.test", &t::connector(&ca, &[], false)).await.expect("tls")).await;
    assert_eq!(t::get1(&mut open, "a.test", "/").await.status, 200);

    let two = ca.issue(&["a.test"]);
    t::replace_file(&key, two.key_pem.as_bytes());
    t::replace_file(&cert, two.cert_pem.as_bytes());
    let swapped = eventually(30, || async {
        t::presented_for(addr, "a.test").await.is_ok_and(|c| c == two.der)
    })
    .await;
    assert!(swapped, "new certificate not served; log:\n{}", lb.proc.log());
    // The connection opened before the swap is untouched.
    assert_eq!(t::get1(&mut open, "a.test", "/").await.status, 200);
    assert!(metric(&lb, "autolb_tls_certificate_reloads_total{listener=\"secure\",result=\"success\"}").await >= 1);
    assert!(lb.proc.log().contains("certificate reloaded"));
}

#[tokio::test]
async fn a_bad_certificate_is_refused_and_the_old_one_keeps_serving() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    let (cert, key) = one.write(dir.path(), "a");
    let lb = Autolb::start(&https_config(&[(cert.clone(), key.clone())], "", "", "", &[e.addr]));
    let addr = lb.addr("secure");
    let refusals = || lb.proc.log().matches("certificate reload refused").count();

    // Not PEM at all.
    t::replace_file(&cert, b"this is not a certificate\n");
    assert!(eventually(30, || async { refusals() >= 1 }).await, "log:\n{}", lb.proc.log());
    assert!(lb.proc.log().contains("no certificate found"), "{}", lb.proc.log());
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);

    // A valid certificate with somebody else's key.
    let (two, three) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    t::replace_file(&key, three.key_pem.as_bytes());
    t::replace_file(&cert, two.cert_pem.as_bytes());
    assert!(eventually(30, || async { refusals() >= 2 }).await, "log:\n{}", lb.proc.log());
    assert!(lb.proc.log().contains("does not match certificate"), "{}", lb.proc.log());
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);
    let failed = "autolb_tls_certificate_reloads_total{listener=\"secure\",result=\"failure\"}";
    assert!(metric(&lb, failed).await >= 2);

    // Fixed: the new pair is served.
    t::replace_file(&key, two.key_pem.as_bytes());
    let fixed = eventually(30, || async {
        t::presented_for(addr, "a.test").await.is_ok_and(|c| c == two.der)
    })
    .await;
    assert!(fixed, "log:\n{}", lb.proc.log());
}

#[tokio::test]
async fn redirect_to_https_and_hsts() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["shop.test"]).write(dir.path(), "shop")];
    let redirects = "  - { name: web, listen: \"127.0.0.1:0\", protocol: http, redirect_https: true, https_port: 8443 }
  - { name: web443, listen: \"127.0.0.1:0\", protocol: http, redirect_https: true }
";
    let hsts = "    hsts: { max_age: 1d, include_subdomains: true }\n";
    let lb = Autolb::start(&https_config(&certs, "", hsts, redirects, &[e.addr]));

    let mut c = common::Client::connect(lb.addr("web")).await;
    let r = c.get_with("/a/b?c=d", &[("host", "shop.test:8080")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://shop.test:8443/a/b?c=d");
    let r = c.get_with("/", &[("host", "bad host/x")]).await;
    assert_eq!(r.status, 400);
    let r = common::Client::connect(lb.addr("web443"))
        .await
        .get_with("/x", &[("host", "shop.test")])
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://shop.test/x");
    assert!(r.headers.get("strict-transport-security").is_none());

    let s = t::connect(lb.addr("secure"), "shop.test", &t::connector(&ca, &[], false))
        .await
        .expect("tls");
    let r = t::get1(&mut t::h1(s).await, "shop.test", "/echo").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["strict-transport-security"], "max-age=86400; includeSubDomains");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    // Also on answers autolb writes itself (HTTP/2 here).
    let s = t::connect(lb.addr("secure"), "shop.test", &t::connector(&ca, &[b"h2"], false))
        .await
        .expect("tls");
    let mut tx = t::h2(s).await;
    let req = http::Request::get("https://shop.test/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = t::reply(tx.send_request(req).await.expect("response")).await;
    assert_eq!(r.headers["strict-transport-security"], "max-age=86400; includeSubDomains");
}

#[tokio::test]
async fn tls_and_mtls_and_h2_to_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend_ca = TestCa::new("backend CA");
    let client_ca = TestCa::new("client CA");
    let server = backend_ca.issue(&["backend.test"]);
    let client = client_ca.issue_with(&["autolb-client"], false, true);
    let (client_cert, client_key) = client.write(dir.path(), "client");
    let ca_file = backend_ca.write(dir.path(), "backend-ca");
    let backend = t::tls_backend("tb", &server, Some(&client_ca)).await;
    let open_backend = t::tls_backend("open", &server, None).await;
    let tls = |extra: &str| {
        format!("{{ sni: backend.test, ca: {ca_file:?}, client_cert: {client_cert:?}, client_key: {client_key:?}{extra} }}")
    };
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: mtls }}
routes:
  - {{ path_prefix: /h2, pool: h2 }}
  - {{ path_prefix: /nocert, pool: nocert }}
  - {{ path_prefix: /wrongname, pool: wrongname }}
pools:
  mtls:
    tls: {}
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 1s }}
    backends: [{{ address: \"{backend}\" }}]
  h2:
    protocol: h2
    tls: {}
    backends: [{{ address: \"{backend}\" }}]
  nocert:
    retries: 0
    tls: {{ sni: backend.test, ca: {ca_file:?} }}
    backends: [{{ address: \"{backend}\" }}]
  wrongname:
    retries: 0
    tls: {{ sni: other.test, ca: {ca_file:?} }}
    backends: [{{ address: \"{open_backend}\" }}]
",
        tls(""),
        tls(""),
    );
    let lb = Autolb::start(&yaml);
    let mut c = common::Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-client-cert"], "autolb-client");
        assert_eq!(r.headers["x-version"], "HTTP/1.1");
    }
    for _ in 0..3 {
        let r = c.get("/h2/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-client-cert"], "autolb-client");
        assert_eq!(r.headers["x-version"], "HTTP/2.0");
    }
    assert_eq!(c.get("/nocert").await.status, 502, "the backend requires a client certificate");
    assert_eq!(c.get("/wrongname").await.status, 502, "the name is verified");
    // The active check speaks TLS (with the client certificate) too.
    let checked = eventually(20, || async {
        let j = common::get(lb.admin, "/loadbalancer/status").await.json();
        j.to_string().contains("status 200")
    })
    .await;
    assert!(checked, "health check over TLS never passed; log:\n{}", lb.proc.log());
}

#[tokio::test]
async fn h2c_to_backends_with_prior_knowledge() {
    let backend = common::raw_backend(|tcp| async move {
        let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let resp = http::Response::builder()
                .header("x-version", format!("{:?}", req.version()))
                .header("x-authority", req.uri().authority().map_or("-".into(), |a| a.to_string()))
                .body(Full::new(Bytes::from_static(b"ok")))
                .expect("response");
            Ok::<_, std::convert::Infallible>(resp)
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .await;
    })
    .await;
    let pools = format!(
        "pools:\n  web:\n    protocol: h2\n    backends:\n{}",
        common::backend_list(&[backend], "")
    );
    let lb = Autolb::start(&common::config(1, "", &pools));
    let mut c = common::Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get_with("/", &[("host", "app.test")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-version"], "HTTP/2.0");
        assert_eq!(r.headers["x-authority"], "app.test");
    }
}

#[tokio::test]
async fn curl_speaks_http2_over_tls_when_installed() {
    let Ok(v) = std::process::Command::new("curl").arg("--version").output() else {
        return;
    };
    if !String::from_utf8_lossy(&v.stdout).contains("HTTP2") {
        return;
    }
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["a.test"]).write(dir.path(), "a")];
    let ca_file = ca.write(dir.path(), "ca");
    let lb = Autolb::start(&https_config(&certs, "", "", "", &[e.addr]));
    let port = lb.addr("secure").port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http2", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version}", &format!("https://a.test:{port}/")])
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "e\n2");
}
