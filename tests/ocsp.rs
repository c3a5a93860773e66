//! OCSP stapling against a real responder: `openssl ocsp` serving an index of the test CA's
//! certificates (signed by a delegated responder certificate), autolb's https listener with
//! `ocsp_stapling: true`, and a rustls client that records the staple it is sent.
//! Cases: a good response is stapled and refreshed, and kept while the responder is down;
//! a responder down at start leaves the certificate served without a staple until it comes
//! up; a revoked certificate is served without a staple and counted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::tls::{self as t, Issued, TestCa};
use common::{Autolb, Proc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_cert::der::Decode;

/// The DER of an Authority Information Access extension naming `url` as OCSP responder.
fn aia(url: &str) -> rcgen::CustomExtension {
    let ocsp_oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let mut location = vec![0x86, url.len() as u8];
    location.extend_from_slice(url.as_bytes());
    let mut desc = vec![0x30, (ocsp_oid.len() + location.len()) as u8];
    desc.extend_from_slice(&ocsp_oid);
    desc.extend_from_slice(&location);
    let mut seq = vec![0x30, desc.len() as u8];
    seq.extend_from_slice(&desc);
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], seq)
}

/// The CA, the served certificate (with `aia_url` in its AIA if any) and the responder's
/// OCSP-signing certificate, written into `dir`.
struct Pki {
    ca: TestCa,
    leaf: Issued,
    pair: (PathBuf, PathBuf),
    dir: PathBuf,
}

fn pki(dir: &Path, aia_url: Option<&str>) -> Pki {
    let ca = TestCa::new("OCSP test CA");
    let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a.test");
    if let Some(url) = aia_url {
        params.custom_extensions.push(aia(url));
    }
    let leaf = ca.sign(params);
    let pair = leaf.write(dir, "leaf");
    let mut responder = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    responder
        .distinguished_name
        .push(rcgen::DnType::CommonName, "OCSP responder");
    responder.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
    ca.sign(responder).write(dir, "responder");
    ca.write(dir, "ca");
    Pki {
        ca,
        leaf,
        pair,
        dir: dir.to_path_buf(),
    }
}

impl Pki {
    /// Write the responder's index: the leaf valid, or revoked.
    fn index(&self, revoked: bool) -> PathBuf {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.leaf.der).expect("parse");
        let serial: String = cert
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02X}"))
            .collect();
        let (status, when) = match revoked {
            true => ("R", "240101000000Z"),
            false => ("V", ""),
        };
        let path = self.dir.join("index.txt");
        let line = format!("{status}\t491231235959Z\t{when}\t{serial}\tunknown\t/CN=a.test\n");
        std::fs::write(&path, line).expect("index");
        path
    }

    /// `openssl ocsp` answering on `port` (responses valid one minute), once it listens.
    /// Its log is `Proc::log`.
    async fn responder(&self, port: u16, revoked: bool) -> Proc {
        let index = self.index(revoked);
        let file = |name: &str| self.dir.join(name).display().to_string();
        let mut child = common::command("openssl")
            .args(["ocsp", "-index", &index.display().to_string()])
            .args(["-port", &port.to_string(), "-CA", &file("ca.pem")])
            .args(["-rsigner", &file("responder.crt")])
            .args(["-rkey", &file("responder.key"), "-nmin", "1", "-ignore_err"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl ocsp (installed by .ci/run)");
        let log = common::collect(child.stderr.take().expect("stderr"));
        let proc = Proc { child, log };
        // Said once it listens. (Not probed with a connection: an empty connection blocks
        // `openssl ocsp`, which serves one connection at a time, for good.)
        common::wait_until(20, "openssl ocsp to listen", || async {
            proc.log()
                .contains("waiting for OCSP client connections")
                .then_some(())
        })
        .await;
        proc
    }

    fn autolb(&self, backend: std::net::SocketAddr, tls_extra: &str) -> Autolb {
        let extra = format!("      ocsp_stapling: true\n{tls_extra}");
        Autolb::start(&t::https_config(
            std::slice::from_ref(&self.pair),
            &extra,
            "",
            "",
            &[backend],
        ))
    }
}

/// A verifier that records the OCSP response the server stapled (empty: none).
#[derive(Debug)]
struct Capture {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = ocsp_response.to_vec();
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The staple served on a new TLS connection (a rustls client asks for one), if any.
async fn staple(lb: &Autolb, ca: &TestCa) -> Option<Vec<u8>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(ca.roots()), autolb::tls::provider())
            .build()
            .expect("verifier");
    let cfg = rustls::ClientConfig::builder_with_provider(autolb::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture {
            inner,
            seen: seen.clone(),
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    t::connect(lb.addr("secure"), "a.test", &connector)
        .await
        .expect("TLS handshake (served with or without a staple)");
    let der = seen.lock().expect("lock").clone();
    (!der.is_empty()).then_some(der)
}

/// The staple's certificate status is good; returns its thisUpdate (Unix seconds).
fn good_this_update(der: &[u8]) -> u64 {
    let response = x509_ocsp::OcspResponse::from_der(der).expect("an OCSP response");
    let bytes = response.response_bytes.expect("response bytes");
    let basic = x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes()).expect("basic");
    let single = &basic.tbs_response_data.responses[0];
    assert!(matches!(single.cert_status, x509_ocsp::CertStatus::Good(_)));
    single.this_update.0.to_unix_duration().as_secs()
}

async fn count(lb: &Autolb, result: &str) -> u64 {
    let sample = format!("autolb_ocsp_responses_total{{listener=\"secure\",result=\"{result}\"}}");
    t::metric(lb, &sample).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_response_is_stapled_refreshed_and_kept_while_the_responder_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let pki = pki(dir.path(), Some(&format!("http://127.0.0.1:{port}")));
    let mut responder = Some(pki.responder(port, false).await);
    let echo = common::echo("e1");
    let lb = pki.autolb(echo.addr, "");
    let first = common::wait_until(30, "a staple", || staple(&lb, &pki.ca)).await;
    let first_update = good_this_update(&first);
    assert_eq!(
        t::metric(
            &lb,
            "autolb_ocsp_stapled{listener=\"secure\",certificate=\"a.test\"}"
        )
        .await,
        1
    );
    // The responses are valid one minute: refreshed about 30 s later, a newer staple served.
    common::wait_until(90, "a refreshed staple", || async {
        let now = staple(&lb, &pki.ca).await?;
        (good_this_update(&now) > first_update).then_some(())
    })
    .await;
    assert!(count(&lb, "good").await >= 2);
    // The responder goes away: the next refresh fails, the staple (still valid) stays.
    drop(responder.take());
    common::wait_until(90, "a failed refresh", || async {
        (count(&lb, "unreachable").await >= 1).then_some(())
    })
    .await;
    let kept = staple(&lb, &pki.ca)
        .await
        .expect("the valid staple is kept");
    good_this_update(&kept);
    assert!(lb.proc.log().contains("OCSP fetch failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_down_at_start_leaves_no_staple_until_it_comes_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    // No AIA in the certificate: the configured responder is asked.
    let pki = pki(dir.path(), None);
    let echo = common::echo("e1");
    let responder_url = format!("      ocsp_responder: http://127.0.0.1:{port}\n");
    let lb = pki.autolb(echo.addr, &responder_url);
    common::wait_until(30, "a failed fetch", || async {
        (count(&lb, "unreachable").await >= 1).then_some(())
    })
    .await;
    assert_eq!(staple(&lb, &pki.ca).await, None, "served without a staple");
    let _responder = pki.responder(port, false).await;
    let stapled = common::wait_until(60, "a staple once the responder is up", || {
        staple(&lb, &pki.ca)
    })
    .await;
    good_this_update(&stapled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_served_without_a_staple() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let pki = pki(dir.path(), Some(&format!("http://127.0.0.1:{port}")));
    let _responder = pki.responder(port, true).await;
    let echo = common::echo("e1");
    let lb = pki.autolb(echo.addr, "");
    common::wait_until(30, "the revoked status", || async {
        (count(&lb, "revoked").await >= 1).then_some(())
    })
    .await;
    assert_eq!(
        staple(&lb, &pki.ca).await,
        None,
        "a revoked status is never stapled"
    );
    assert_eq!(
        t::metric(
            &lb,
            "autolb_ocsp_stapled{listener=\"secure\",certificate=\"a.test\"}"
        )
        .await,
        0
    );
    assert!(lb
        .proc
        .log_shows("certificate revoked", std::time::Duration::from_secs(5)));
}
