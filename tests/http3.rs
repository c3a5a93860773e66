//! HTTP/3 (`http3: true` on an https listener) through the real `autolb` with a real HTTP/3
//! client (h3 over quinn): requests and bodies through the proxy, 100 concurrent streams on
//! one connection, a large response, Alt-Svc on the TCP side, a certificate swap seen by the
//! next QUIC handshake, GOAWAY on drain, and 0-RTT off by default.

mod common;
mod http3_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{self as t, eventually, https_config, metric, TestCa};
use common::{echo, Autolb};
use http3_support::{client, connect, h3_over, request, start, LIMIT};
use rustls::pki_types::CertificateDer;

#[tokio::test]
async fn get_and_post_with_bodies_go_through_the_proxy_over_http3() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let addr = s.lb.addr("secure");
    let endpoint = client(&s.ca, false);
    let mut c = connect(&endpoint, addr, "a.test").await;

    let get = request(&mut c.send, "GET", "https://a.test/echo?x=1", b"")
        .await
        .expect("GET");
    assert_eq!(get.status, 200, "{}", String::from_utf8_lossy(&get.body));
    let doc = get.json();
    assert_eq!(doc["method"], "GET");
    assert_eq!(doc["path"], "/echo?x=1");
    assert_eq!(doc["body_length"], 0);
    // Forwarded as a request without a body (not chunked), with the client's scheme.
    assert!(doc["headers"].get("transfer-encoding").is_none(), "{doc}");
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https");
    assert_eq!(doc["headers"]["host"], "a.test");
    assert!(get.headers.contains_key("x-backend"));
    // The TCP side's Alt-Svc is not repeated over HTTP/3.
    assert!(!get.headers.contains_key("alt-svc"));

    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let post = request(&mut c.send, "POST", "https://a.test/echo", &upload)
        .await
        .expect("POST");
    assert_eq!(post.status, 200);
    assert_eq!(post.json()["method"], "POST");
    assert_eq!(post.json()["body_length"], upload.len());

    // No route for this path: the proxy's own 404, as over TCP.
    let missing = request(&mut c.send, "GET", "https://a.test/nothing-here", b"")
        .await
        .expect("GET");
    assert_eq!(missing.status, 404);

    // The access log says HTTP/3; the downstream gauge counts the QUIC connection; the
    // handshake is counted as TLS 1.3.
    assert!(
        s.lb.proc.log_shows("\"protocol\":\"HTTP/3\",", LIMIT),
        "log:\n{}",
        s.lb.proc.log()
    );
    assert_eq!(
        metric(&s.lb, "autolb_downstream_connections{listener=\"secure\"}").await,
        1
    );
    c.conn.close(0u32.into(), b"");
    let gone = eventually(30, || async {
        metric(&s.lb, "autolb_downstream_connections{listener=\"secure\"}").await == 0
    })
    .await;
    assert!(gone, "QUIC connection still counted after it closed");
}

#[tokio::test]
async fn a_hundred_concurrent_streams_share_one_connection() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let endpoint = client(&s.ca, false);
    let c = connect(&endpoint, s.lb.addr("secure"), "a.test").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut send = c.send.clone();
        tasks.spawn(async move {
            // Each waits at the backend, so that all are open at once.
            request(
                &mut send,
                "GET",
                &format!("https://a.test/delay/200?i={i}"),
                b"",
            )
            .await
        });
    }
    // All 100 are at the backend at the same time: one connection carries them at once.
    let all_open = eventually(30, || async { active(&s.lb).await == 100 }).await;
    assert!(
        all_open,
        "never 100 requests in flight; log:\n{}",
        s.lb.proc.log()
    );
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        let answer = done.expect("task").expect("answer");
        assert_eq!(answer.status, 200);
        ok += 1;
    }
    assert_eq!(ok, 100);
    assert!(
        !c.driver.is_finished(),
        "the connection closed under the load"
    );
}

#[tokio::test]
async fn a_large_response_arrives_whole() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let endpoint = client(&s.ca, false);
    let mut c = connect(&endpoint, s.lb.addr("secure"), "a.test").await;
    let size = 32 * 1024 * 1024;
    let answer = request(
        &mut c.send,
        "GET",
        &format!("https://a.test/bytes/{size}"),
        b"",
    )
    .await
    .expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), size);
    // `/bytes/N`: byte k is k % 256.
    assert!(answer.body.iter().enumerate().all(|(k, b)| *b == k as u8));
}

#[tokio::test]
async fn responses_over_tcp_advertise_http3_on_the_same_port() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let addr = s.lb.addr("secure");
    let mut h1 = t::h1(
        t::connect(addr, "a.test", &t::connector(&s.ca, &[], false))
            .await
            .expect("tls"),
    )
    .await;
    let reply = t::get1(&mut h1, "a.test", "/").await;
    assert_eq!(reply.status, 200);
    let alt = reply.headers.get("alt-svc").expect("Alt-Svc over TCP");
    assert_eq!(alt, &format!("h3=\":{}\"; ma=86400", addr.port()));

    // Without http3, none.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = s.ca.issue(&["a.test"]).write(dir.path(), "b");
    let plain = Autolb::start(&https_config(&[(cert, key)], "", "", "", &[e.addr]));
    let mut h1 = t::h1(
        t::connect(
            plain.addr("secure"),
            "a.test",
            &t::connector(&s.ca, &[], false),
        )
        .await
        .expect("tls"),
    )
    .await;
    let reply = t::get1(&mut h1, "a.test", "/").await;
    assert!(reply.headers.get("alt-svc").is_none());
}

/// Requests in flight to backends (`autolb_backend_active_requests`, summed).
async fn active(lb: &Autolb) -> u64 {
    let text = common::get(lb.admin, "/metrics").await.text();
    text.lines()
        .filter_map(|l| l.strip_prefix("autolb_backend_active_requests{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The certificate the server presented on `conn`.
fn presented(conn: &quinn::Connection) -> CertificateDer<'static> {
    let identity = conn.peer_identity().expect("peer identity");
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("certificate chain");
    chain[0].clone()
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_seen_by_the_next_quic_handshake() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let addr = s.lb.addr("secure");
    let endpoint = client(&s.ca, false);
    let mut open = connect(&endpoint, addr, "a.test").await;
    let first = presented(&open.conn);

    let two = s.ca.issue(&["a.test"]);
    t::replace_file(&s.key, two.key_pem.as_bytes());
    t::replace_file(&s.cert, two.cert_pem.as_bytes());
    let swapped = eventually(30, || async {
        let c = connect(&endpoint, addr, "a.test").await;
        let now = presented(&c.conn);
        c.conn.close(0u32.into(), b"");
        now == two.der
    })
    .await;
    assert!(
        swapped,
        "new certificate not served over QUIC; log:\n{}",
        s.lb.proc.log()
    );
    assert_ne!(first, two.der);
    // The connection made before the swap goes on.
    let answer = request(&mut open.send, "GET", "https://a.test/", b"")
        .await
        .expect("answer");
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_drain_sends_goaway_and_lets_the_request_in_flight_finish() {
    let e = echo("e");
    let s = start(&[e.addr], "");
    let endpoint = client(&s.ca, false);
    let mut c = connect(&endpoint, s.lb.addr("secure"), "a.test").await;
    // A request the backend answers in 1.5 s, in flight when the drain starts.
    let mut send = c.send.clone();
    let slow =
        tokio::spawn(
            async move { request(&mut send, "GET", "https://a.test/delay/1500", b"").await },
        );
    // The drain starts once the request is at the backend.
    let at_backend = eventually(30, || async { active(&s.lb).await == 1 }).await;
    assert!(at_backend, "the request never reached the backend");
    let pid = s.lb.proc.pid();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let answer = slow
        .await
        .expect("task")
        .expect("the request in flight is answered");
    assert_eq!(answer.status, 200);
    // GOAWAY: a new request on the connection is refused, and the connection closes
    // without an error.
    let closed = tokio::time::timeout(LIMIT, &mut c.driver)
        .await
        .expect("connection closed after GOAWAY")
        .expect("driver");
    assert!(closed.is_h3_no_error(), "closed with {closed:?}");
    assert!(request(&mut c.send, "GET", "https://a.test/", b"")
        .await
        .is_err());
}

#[tokio::test]
async fn zero_rtt_is_off_by_default_and_on_with_early_data() {
    let e = echo("e");
    for (extra, expect) in [("", false), ("    quic: { early_data: true }\n", true)] {
        let s = start(&[e.addr], extra);
        let addr = s.lb.addr("secure");
        let endpoint = client(&s.ca, true);
        // A first connection leaves a session ticket with the client.
        let mut first = connect(&endpoint, addr, "a.test").await;
        assert_eq!(
            request(&mut first.send, "GET", "https://a.test/", b"")
                .await
                .expect("answer")
                .status,
            200
        );
        first.conn.close(0u32.into(), b"");
        // The next ones offer 0-RTT (each with a ticket from the one before): accepted
        // only with early_data: true.
        let mut accepted = false;
        for _ in 0..3 {
            let connecting = endpoint.connect(addr, "a.test").expect("connect");
            match connecting.into_0rtt() {
                Ok((conn, zero_rtt)) => {
                    accepted |= tokio::time::timeout(LIMIT, zero_rtt).await.unwrap_or(false);
                    conn.close(0u32.into(), b"");
                }
                Err(connecting) => {
                    let conn = tokio::time::timeout(LIMIT, connecting)
                        .await
                        .expect("handshake in time")
                        .expect("handshake");
                    conn.close(0u32.into(), b"");
                }
            }
            if accepted {
                break;
            }
        }
        assert_eq!(accepted, expect, "0-RTT with {extra:?}");
    }
}

#[tokio::test]
async fn with_early_data_a_post_sent_in_0rtt_is_answered() {
    let e = echo("e");
    let s = start(&[e.addr], "    quic: { early_data: true }\n");
    let addr = s.lb.addr("secure");
    let endpoint = client(&s.ca, true);
    let mut first = connect(&endpoint, addr, "a.test").await;
    assert_eq!(
        request(&mut first.send, "GET", "https://a.test/", b"")
            .await
            .expect("answer")
            .status,
        200
    );
    first.conn.close(0u32.into(), b"");
    let mut sent = false;
    for _ in 0..20 {
        let connecting = endpoint.connect(addr, "a.test").expect("connect");
        let Ok((conn, accepted)) = connecting.into_0rtt() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut c = h3_over(conn).await;
        let post = request(&mut c.send, "POST", "https://a.test/echo", b"pay").await;
        assert!(tokio::time::timeout(LIMIT, accepted).await.unwrap_or(false));
        assert_eq!(post.expect("answer").json()["body_length"], 3);
        sent = true;
        break;
    }
    assert!(sent, "no 0-RTT connection; log:\n{}", s.lb.proc.log());
}

/// `POST /config/reload` on the admin port.
async fn reload(lb: &Autolb) -> common::Reply {
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    common::Client::connect(lb.admin).await.request(req).await
}

/// A QUIC handshake with `addr`, bounded (quinn's own idle timeout otherwise).
async fn handshake_ok(endpoint: &quinn::Endpoint, addr: SocketAddr) -> bool {
    let Ok(connecting) = endpoint.connect(addr, "a.test") else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"");
            true
        }
        _ => false,
    }
}

#[tokio::test]
async fn a_reload_turns_http3_on_and_off() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let pair = ca.issue(&["a.test"]).write(dir.path(), "a");
    let without = https_config(std::slice::from_ref(&pair), "", "", "", &[e.addr]);
    let lb = Autolb::start(&without);
    let addr = lb.addr("secure");
    let endpoint = client(&ca, false);
    assert!(
        !handshake_ok(&endpoint, addr).await,
        "QUIC served without http3"
    );

    let with = https_config(
        std::slice::from_ref(&pair),
        "",
        "    http3: true\n    quic: { retry: always }\n",
        "",
        &[e.addr],
    );
    std::fs::write(&lb.config, &with).expect("write config");
    let r = reload(&lb).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Every new client proves its address first (a Retry round trip), then is served.
    let mut c = connect(&endpoint, addr, "a.test").await;
    let answer = request(&mut c.send, "GET", "https://a.test/", b"")
        .await
        .expect("answer");
    assert_eq!(answer.status, 200);

    std::fs::write(&lb.config, &without).expect("write config");
    let r = reload(&lb).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The open connection got GOAWAY and closes; new handshakes are refused.
    let closed = tokio::time::timeout(LIMIT, &mut c.driver)
        .await
        .expect("connection closed after http3 was turned off")
        .expect("driver");
    assert!(closed.is_h3_no_error(), "closed with {closed:?}");
    let off = eventually(30, || async { !handshake_ok(&endpoint, addr).await }).await;
    assert!(off, "QUIC still served after http3 was turned off");
}

#[tokio::test]
async fn after_an_upgrade_the_new_process_serves_http3_and_the_old_one_drains_its_connections() {
    let e = echo("e");
    let mut s = start(&[e.addr], "");
    assert!(
        s.lb.proc
            .log_shows("a successor can take over", Duration::from_secs(10)),
        "{}",
        s.lb.proc.log()
    );
    let addr = s.lb.addr("secure");
    let endpoint = client(&s.ca, false);
    let mut old = connect(&endpoint, addr, "a.test").await;
    let answer = request(&mut old.send, "GET", "https://a.test/", b"")
        .await
        .expect("answer");
    assert_eq!(answer.status, 200);

    let mut child = common::command(common::AUTOLB)
        .args(["run", "--upgrade", "-c"])
        .arg(&s.lb.config)
        .env("AUTOLB_LOG", "info")
        .env("TMPDIR", s.lb.config.parent().expect("config dir"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the new autolb");
    let log = common::collect(child.stderr.take().expect("stderr"));
    let new = common::Proc { child, log };
    assert!(
        new.log_shows("listening for HTTP/3", LIMIT),
        "new process:\n{}\nold process:\n{}",
        new.log(),
        s.lb.proc.log()
    );
    // The old process says GOAWAY on its connection, which closes cleanly.
    let closed = tokio::time::timeout(LIMIT, &mut old.driver)
        .await
        .expect("old connection closed after the upgrade")
        .expect("driver");
    assert!(closed.is_h3_no_error(), "closed with {closed:?}");
    let exited = eventually(30, || {
        let done = s.lb.proc.child.try_wait().expect("wait").is_some();
        async move { done }
    })
    .await;
    assert!(exited, "old process still running:\n{}", s.lb.proc.log());
    // New connections are served by the new process.
    let mut c = connect(&endpoint, addr, "a.test").await;
    let answer = request(&mut c.send, "GET", "https://a.test/", b"")
        .await
        .expect("answer from the new process");
    assert_eq!(answer.status, 200);
    drop(new);
}
