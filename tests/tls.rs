//! TLS termination and HTTP/2 through the real `autolb`: SNI with wildcards and strict_sni,
//! TLS versions, ALPN h2 with many concurrent streams, h2c, idle and handshake timeouts,
//! redirect and HSTS, and curl where it is installed. Certificate reloads: `tls_reload.rs`;
//! TLS to backends: `tls_backends.rs`; `autolb check`: `tls_config.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tls::{self as t, eventually, https_config, metric, TestCa};
use common::{echo, Autolb};
use http_body_util::Full;

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
    let v12 = "autolb_tls_handshakes_total{listener=\"secure\",version=\"TLSv1.2\"}";
    let v13 = "autolb_tls_handshakes_total{listener=\"secure\",version=\"TLSv1.3\"}";
    let counted = eventually(10, || async {
        metric(&lb, v12).await >= 1 && metric(&lb, v13).await >= 8
    })
    .await;
    assert!(
        counted,
        "{}",
        common::get(lb.admin, "/metrics").await.text()
    );

    let strict = lb.addr("strict");
    assert!(t::presented_for(strict, "a.test").await.is_ok());
    assert!(t::presented_for(strict, "unknown.test").await.is_err());
    assert!(
        t::presented_for(strict, "127.0.0.1").await.is_err(),
        "no SNI"
    );
    let refused =
        "autolb_tls_handshake_errors_total{listener=\"strict\",reason=\"no_certificate\"}";
    assert!(eventually(10, || async { metric(&lb, refused).await >= 2 }).await);
}

#[tokio::test]
async fn alpn_h2_answers_many_concurrent_streams_on_one_connection() {
    let (e1, e2) = (echo("e1"), echo("e2"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["a.test"]).write(dir.path(), "a")];
    let lb = Autolb::start(&https_config(&certs, "", "", "", &[e1.addr, e2.addr]));
    let s = t::connect(
        lb.addr("secure"),
        "a.test",
        &t::connector(&ca, &[b"h2", b"http/1.1"], false),
    )
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
    let replies = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(requests),
    )
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
    let pools = format!(
        "pools:\n  web:\n    backends:\n{}",
        common::backend_list(&[e.addr], "")
    );
    let lb = Autolb::start(&common::config(1, ", h2c: true", &pools));
    let tcp = tokio::net::TcpStream::connect(lb.addr("web"))
        .await
        .expect("connect");
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
async fn redirect_to_https_and_hsts() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["shop.test"]).write(dir.path(), "shop")];
    let redirects = "  - { name: web, listen: \"127.0.0.1:0\", protocol: http, redirect_https: true, https_port: 8443 }
  - { name: web443, listen: \"127.0.0.1:0\", protocol: http, redirect_https: true, pool: web }
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
    // ACME HTTP-01 challenges go to the listener's pool (when it has one) over plain http.
    let challenge = "/.well-known/acme-challenge/token";
    let r = common::Client::connect(lb.addr("web443"))
        .await
        .get_with(challenge, &[("host", "shop.test")])
        .await;
    assert_eq!(r.headers["x-backend"], "e", "status {}", r.status);
    let r = c.get_with(challenge, &[("host", "shop.test")]).await;
    assert_eq!(r.status, 308, "no pool, no route: redirected");

    let s = t::connect(
        lb.addr("secure"),
        "shop.test",
        &t::connector(&ca, &[], false),
    )
    .await
    .expect("tls");
    let r = t::get1(&mut t::h1(s).await, "shop.test", "/echo").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=86400; includeSubDomains"
    );
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    // Also on answers autolb writes itself (HTTP/2 here).
    let s = t::connect(
        lb.addr("secure"),
        "shop.test",
        &t::connector(&ca, &[b"h2"], false),
    )
    .await
    .expect("tls");
    let mut tx = t::h2(s).await;
    let req = http::Request::get("https://shop.test/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = t::reply(tx.send_request(req).await.expect("response")).await;
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=86400; includeSubDomains"
    );
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
        .args([
            "-w",
            "\n%{http_version}",
            &format!("https://a.test:{port}/"),
        ])
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "e\n2");
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_but_a_slow_response_is_not_cut() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let certs = vec![ca.issue(&["a.test"]).write(dir.path(), "a")];
    let lb = Autolb::start(&https_config(
        &certs,
        "",
        "    idle_timeout: 1s\n",
        "",
        &[e.addr],
    ));
    let connector = t::connector(&ca, &[b"h2"], false);
    let s = t::connect(lb.addr("secure"), "a.test", &connector)
        .await
        .expect("tls");
    let mut tx = t::h2(s).await;
    // Longer than idle_timeout, but in flight: not idle.
    let req = http::Request::get("https://a.test/delay/2500")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = t::reply(tx.send_request(req).await.expect("response")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "e"));
    // Then idle: GOAWAY and close after about a second.
    let closed = eventually(15, || {
        let closed = tx.is_closed();
        async move { closed }
    })
    .await;
    assert!(closed, "the idle h2 connection stayed open");

    // A client that never sends its ClientHello is dropped after min(idle_timeout, 10s).
    let mut silent = tokio::net::TcpStream::connect(lb.addr("secure"))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("closed by autolb within 15s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let timeouts = "autolb_tls_handshake_errors_total{listener=\"secure\",reason=\"timeout\"}";
    assert!(eventually(10, || async { metric(&lb, timeouts).await >= 1 }).await);
}
