//! TLS test helpers: a CA made with rcgen that issues server and client certificates (also
//! expired ones), rustls clients (HTTP/1.1 and HTTP/2 over TLS), what a handshake presented,
//! and a TLS backend in the test process that can require a client certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Reply;

/// A certificate and its key, as PEM, and the certificate's DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Issued {
    /// Write `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A test certificate authority.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), CN = first name.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with(names, false, false)
    }

    /// `expired`: valid in 2020 only; `client`: a client-auth certificate.
    pub fn issue_with(&self, names: &[&str], expired: bool, client: bool) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate for `names` valid until `(year, month, day)` (from 2020).
    pub fn issue_until(&self, names: &[&str], (y, m, d): (i32, u8, u8)) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A certificate made from `params` (any extensions: AIA, OCSP signing, ...).
    pub fn sign(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA root");
        roots
    }

    /// A CRL of this CA (PEM) revoking `revoked` (valid from 2020 to 2100).
    pub fn crl(&self, revoked: &[&Issued]) -> String {
        let revoked_certs = revoked
            .iter()
            .map(|c| {
                let (_, cert) = x509_parser::parse_x509_certificate(&c.der).expect("parse");
                rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(revoked.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// Write the CA certificate as `NAME.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    autolb::tls::provider()
}

/// A connector trusting `ca`, offering `alpn`, with TLS 1.2 only when `tls12_only`.
pub fn connector(ca: &TestCa, alpn: &[&[u8]], tls12_only: bool) -> TlsConnector {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// TLS to `addr` asking for `sni` (an IP address sends no SNI).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The leaf certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a peer certificate")
        .clone()
        .into_owned()
}

/// An HTTP/1.1 connection over TLS.
pub async fn h1(stream: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let (tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    tx
}

/// An HTTP/2 connection over `io` (TLS with ALPN h2, or h2c).
pub async fn h2<I>(io: I) -> http2::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// Collect a response into a `Reply` (within 30 s).
pub async fn reply(resp: hyper::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30s")
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// GET `path` on an HTTP/1.1-over-TLS connection.
pub async fn get1(tx: &mut http1::SendRequest<Full<Bytes>>, host: &str, path: &str) -> Reply {
    tx.ready().await.expect("ready");
    let req = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), tx.send_request(req))
        .await
        .expect("response within 30s")
        .expect("response");
    reply(resp).await
}

/// What the TLS backend saw: `x-client-cert` (the client certificate's CN, or `none`) and
/// `x-version` (the request's HTTP version) come back as headers, with `x-backend: NAME`.
pub async fn tls_backend(
    name: &'static str,
    server: &Issued,
    client_ca: Option<&TestCa>,
) -> SocketAddr {
    let verifier = match client_ca {
        Some(ca) => rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(ca.roots()),
            provider(),
        )
        .build()
        .expect("client verifier"),
        None => rustls::server::WebPkiClientVerifier::no_client_auth(),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    super::raw_backend(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| {
                    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
                    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
                    Some(cn.to_string())
                })
                .unwrap_or_else(|| "none".into());
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let resp = http::Response::builder()
                            .header("x-backend", name)
                            .header("x-client-cert", client)
                            .header("x-version", format!("{:?}", req.version()))
                            .body(Full::new(Bytes::from(name)))
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

/// A connector presenting `client` (mTLS), trusting `ca`.
pub fn client_connector(ca: &TestCa, client: &Issued) -> TlsConnector {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key_der.clone()));
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(vec![client.der.clone()], key)
        .expect("client cert");
    TlsConnector::from(Arc::new(cfg))
}

/// Accepts any server certificate (to look at what a server presents for any name).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connector that accepts whatever certificate the server presents.
pub fn any_cert_connector(alpn: &[&[u8]]) -> TlsConnector {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// The certificate `addr` presents for `sni` (any certificate accepted).
pub async fn presented_for(
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<CertificateDer<'static>> {
    let stream = connect(addr, sni, &any_cert_connector(&[])).await?;
    Ok(presented(&stream))
}

/// Replace `path` with `contents` atomically (write beside it, then rename).
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-swap");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One https listener `secure` (pool `web`) with `certs`, plus `extra` YAML (listeners
/// first, then top-level keys) and the backends of `web`.
pub fn https_config(
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
        super::backend_list(backends, "")
    )
}

/// A Prometheus sample of the admin `/metrics` (0 when absent).
pub async fn metric(lb: &super::Autolb, sample: &str) -> u64 {
    let text = super::get(lb.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `cond` every 100 ms for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    super::poll_for(
        Duration::from_secs(secs),
        Duration::from_millis(100),
        || {
            let c = cond();
            async move { c.await.then_some(()) }
        },
    )
    .await
    .is_some()
}
