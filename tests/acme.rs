//! `tls.acme` against a real ACME server (Debian's pebble, validating for real on loopback):
//! a certificate obtained by http-01 and by tls-alpn-01, served on the https listener
//! (checked by a client that trusts pebble's root only) and served again from storage after
//! a restart; a failed renewal that keeps the old certificate serving and counts the
//! metric; and a fleet of two nodes sharing Redis where one orders and both serve.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::pebble::{self, Pebble};
use common::redis::{cli, free_port, Redis};
use common::tls::{self as t, metric, TestCa};
use common::{echo, wait_until, Autolb};
use rustls::pki_types::CertificateDer;

const SUCCESS: &str = "autolb_acme_orders_total{result=\"success\"}";
const FAILURE: &str = "autolb_acme_orders_total{result=\"failure\"}";
/// The fleet's key (32 bytes, base64).
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Pebble is installed by `.ci/run`; outside CI a machine without it skips, saying so.
fn pebble_missing() -> bool {
    if pebble::installed() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "pebble is not installed (apt-get install pebble)"
    );
    eprintln!("skipped: pebble is not installed and this is not CI (apt-get install pebble)");
    true
}

/// One http listener `web` and one https listener `secure` with `tls.acme` for
/// acme.test and www.acme.test, both to an echo backend; `more` is appended (top level).
fn config(
    web: u16,
    secure: u16,
    pebble: &Pebble,
    challenge: &str,
    storage: &Path,
    backend: std::net::SocketAddr,
    more: &str,
) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:{web}\", protocol: http, pool: web }}
  - name: secure
    listen: \"127.0.0.1:{secure}\"
    protocol: https
    pool: web
    tls:
      acme:
        directory: \"{}\"
        email: ops@acme.test
        domains: [acme.test, www.acme.test]
        challenge: {challenge}
        ca: {:?}
        storage: {storage:?}
pools:
  web:
    backends: [{{ address: \"{backend}\" }}]
{more}",
        pebble.directory, pebble.ca_path
    )
}

/// The leaf `addr` presents for `sni` to a client that trusts only pebble's root (and
/// checks the name), if the handshake succeeds; the client then gets an answer through it.
async fn verified(
    addr: std::net::SocketAddr,
    sni: &str,
    pebble: &Pebble,
) -> Option<CertificateDer<'static>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(autolb::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pebble.roots())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let stream = t::connect(addr, sni, &connector).await.ok()?;
    let leaf = t::presented(&stream);
    let reply = t::get1(&mut t::h1(stream).await, sni, "/echo").await;
    assert_eq!(reply.status, 200, "through the ACME certificate");
    Some(leaf)
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Obtain by `challenge`, check what is served and stored, restart on the same storage.
async fn obtain_serve_and_reuse(challenge: &str) {
    if pebble_missing() {
        return;
    }
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("acme");
    let (web, secure) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), web, secure).await;
    let yaml = config(web, secure, &pebble, challenge, &storage, e.addr, "");
    let lb = Autolb::start(&yaml);
    let leaf = wait_until(90, "the ACME certificate on the https listener", || {
        verified(addr(secure), "acme.test", &pebble)
    })
    .await;
    // Both names are on it; one order, no failure.
    let again = verified(addr(secure), "www.acme.test", &pebble).await;
    assert_eq!(
        again.as_ref(),
        Some(&leaf),
        "one certificate for both names"
    );
    assert_eq!(metric(&lb, SUCCESS).await, 1);
    assert_eq!(metric(&lb, FAILURE).await, 0);
    let expiry =
        "autolb_acme_certificate_expiry_timestamp_seconds{listener=\"secure\",name=\"acme.test\"}";
    assert!(metric(&lb, expiry).await > 1_700_000_000);
    for file in ["secure/key.pem", "secure/cert.pem"] {
        let mode = std::fs::metadata(storage.join(file))
            .expect("stored")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // A restart serves the stored certificate at once and orders nothing.
    drop(lb);
    let lb = Autolb::start(&yaml);
    let served = verified(addr(secure), "acme.test", &pebble).await;
    assert_eq!(served.as_ref(), Some(&leaf), "the stored certificate");
    assert_eq!(metric(&lb, SUCCESS).await, 0);
    assert!(lb.proc.log().contains("stored ACME certificate loaded"));
}

#[tokio::test]
async fn http01_certificate_is_obtained_served_and_reused_after_restart() {
    obtain_serve_and_reuse("http-01").await;
}

#[tokio::test]
async fn tls_alpn01_certificate_is_obtained_served_and_reused_after_restart() {
    obtain_serve_and_reuse("tls-alpn-01").await;
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_old_certificate_and_counts_the_failure() {
    if pebble_missing() {
        return;
    }
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = dir.path().join("acme");
    // A stored certificate that expires within renew_before (30d): renewal is due now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let soon = chrono::DateTime::from_timestamp(now + 5 * 86_400, 0)
        .expect("date")
        .date_naive();
    let old = TestCa::new("old CA").issue_until(
        &["acme.test", "www.acme.test"],
        (
            chrono::Datelike::year(&soon),
            chrono::Datelike::month(&soon) as u8,
            chrono::Datelike::day(&soon) as u8,
        ),
    );
    std::fs::create_dir_all(storage.join("secure")).expect("dir");
    std::fs::write(storage.join("secure/cert.pem"), &old.cert_pem).expect("cert");
    std::fs::write(storage.join("secure/key.pem"), &old.key_pem).expect("key");
    // Pebble validates http-01 on a port where nothing answers: the order fails.
    let (web, secure, nobody) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(dir.path(), nobody, secure).await;
    let lb = Autolb::start(&config(
        web, secure, &pebble, "http-01", &storage, e.addr, "",
    ));
    // Served from the start, before any order.
    let first = t::presented_for(addr(secure), "acme.test")
        .await
        .expect("handshake");
    assert!(first == old.der, "the stored certificate");
    wait_until(60, "a failed order", || async {
        (metric(&lb, FAILURE).await >= 1).then_some(())
    })
    .await;
    assert_eq!(metric(&lb, SUCCESS).await, 0);
    let still = t::presented_for(addr(secure), "acme.test")
        .await
        .expect("handshake");
    assert!(still == old.der, "the old certificate keeps serving");
    assert!(
        lb.proc.log().contains("ACME order failed"),
        "{}",
        lb.proc.log()
    );
}

#[tokio::test]
async fn a_fleet_orders_once_and_every_node_serves_the_certificate() {
    if pebble_missing() {
        return;
    }
    let e = echo("e");
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!(
        "state:\n  backend: redis\n  redis: {{ url: \"{}\" }}\n",
        redis.url()
    );
    // Pebble validates on node a's http port; b starts first, so it most likely holds the
    // lease and orders, and a answers with the token b shared.
    let (web_a, secure_a, web_b, secure_b) = (free_port(), free_port(), free_port(), free_port());
    let pebble = Pebble::start(dir.path(), web_a, secure_a).await;
    let env = [("AUTOLB_ACME_KEY", KEY)];
    let b = Autolb::start_with_env(
        &config(
            web_b,
            secure_b,
            &pebble,
            "http-01",
            &dir.path().join("b"),
            e.addr,
            &state,
        ),
        &env,
    );
    let a = Autolb::start_with_env(
        &config(
            web_a,
            secure_a,
            &pebble,
            "http-01",
            &dir.path().join("a"),
            e.addr,
            &state,
        ),
        &env,
    );
    let leaf_a = wait_until(120, "the certificate on node a", || {
        verified(addr(secure_a), "acme.test", &pebble)
    })
    .await;
    let leaf_b = wait_until(30, "the certificate on node b", || {
        verified(addr(secure_b), "acme.test", &pebble)
    })
    .await;
    assert_eq!(leaf_a, leaf_b, "both nodes serve the one certificate");
    assert_eq!(
        metric(&a, SUCCESS).await + metric(&b, SUCCESS).await,
        1,
        "one node ordered"
    );
    // Both stored it; what Redis holds is sealed (no PEM in it).
    for node in ["a", "b"] {
        assert!(dir.path().join(node).join("secure/cert.pem").exists());
    }
    let sealed = cli(redis.port, &["GET", "{autolb:lease:acme:secure}:value"]);
    assert!(sealed.trim().len() > 100, "shared bundle: {sealed:?}");
    assert!(!sealed.contains("BEGIN"), "sealed at rest");
    // A token one node publishes is answered by the other.
    cli(
        redis.port,
        &[
            "SET",
            "autolb:kv:acme:http01:tok-123",
            "tok-123.thumb",
            "PX",
            "60000",
        ],
    );
    // (A lookup that misses its bounded Redis call, on a loaded machine, falls through to
    // the routes; the CA asks again, and so does the test.)
    for web in [web_a, web_b] {
        common::wait_until(10, "the fleet's token answered", || async {
            let r = common::get(addr(web), "/.well-known/acme-challenge/tok-123").await;
            ((r.status, r.text()) == (200, "tok-123.thumb".to_string())).then_some(())
        })
        .await;
    }
    // Unknown tokens go on to the routes (the echo backend's JSON 404, with its name).
    let r = common::get(addr(web_a), "/.well-known/acme-challenge/other").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-backend"], "e", "answered by the backend");
}

#[test]
fn autolb_check_accepts_acme_alone_and_reports_a_bad_acme_ca_at_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad-ca.pem"), "nothing\n").expect("write");
    let yaml = |ca: &str| {
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: secure
    listen: 127.0.0.1:0
    protocol: https
    pool: web
    tls:
      acme: {{ directory: \"https://ca.test/dir\", domains: [a.test], ca: {ca} }}
pools:
  web:
    backends: [{{ address: 127.0.0.1:3001 }}]
"
        )
    };
    let file = dir.path().join("autolb.yaml");
    TestCa::new("ACME server CA").write(dir.path(), "good-ca");
    std::fs::write(&file, yaml("good-ca.pem")).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 0, "{out}{err}");
    let bad = yaml("bad-ca.pem");
    std::fs::write(&file, &bad).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 1, "{out}{err}");
    let line = bad
        .lines()
        .position(|l| l.contains("bad-ca.pem"))
        .expect("line")
        + 1;
    let col = bad
        .lines()
        .nth(line - 1)
        .and_then(|l| l.find("bad-ca.pem"))
        .expect("col")
        + 1;
    let prefix = format!("{}:{line}:{col}: acme", file.display());
    assert!(
        err.lines().any(|l| l.starts_with(&prefix)),
        "{prefix} in:\n{err}"
    );
}
