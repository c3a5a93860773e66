//! Client certificates on an https listener (mTLS, `tls.client_auth`): the listener's
//! verifier (rustls's WebPKI verifier over the CA bundle and CRLs) behind an `ArcSwap`, so
//! a reload or a changed CA/CRL file applies to the next handshake of TCP and QUIC alike;
//! the check of a finished handshake (a resumed session's certificate is verified again
//! against the current CA and CRLs); and the verified identity forwarded to backends.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

use super::client_names as names;
use super::{certs, provider};
use crate::config::{ClientAuth, ClientAuthMode};

/// Why a listener's client CA or CRL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("client_auth.ca: {0}")]
    Ca(certs::CertError),
    #[error("client_auth.ca {}: no usable CA certificate in it ({detail})", path.display())]
    NoCa { path: PathBuf, detail: String },
    #[error("client_auth.crl {}: {detail}", path.display())]
    Crl { path: PathBuf, detail: String },
    #[error("client_auth: {0}")]
    Verifier(String),
}

impl ClientAuthError {
    /// Whether the CRL (else the CA) is at fault: where `autolb check` points.
    pub fn is_crl(&self) -> bool {
        matches!(self, ClientAuthError::Crl { .. })
    }
}

/// The verifier for `auth`: its CA bundle and CRLs read now.
pub fn load_verifier(auth: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, ClientAuthError> {
    let cas = certs::load_ca(&auth.ca).map_err(ClientAuthError::Ca)?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(ClientAuthError::NoCa {
            path: auth.ca.clone(),
            detail: format!("{ignored} unparsable"),
        });
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        // The CA names are not sent (see `root_hint_subjects` below), for all modes alike.
        .clear_root_hint_subjects();
    if let Some(path) = &auth.crl {
        let crl_err = |detail: String| ClientAuthError::Crl {
            path: path.clone(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| crl_err(format!("cannot read: {e}")))?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crl_err(format!("invalid PEM: {e}")))?;
        if crls.is_empty() {
            return Err(crl_err("no X509 CRL in it".into()));
        }
        builder = builder.with_crls(crls);
    }
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| match &auth.crl {
        Some(path) if matches!(e, rustls::server::VerifierBuilderError::InvalidCrl(_)) => {
            ClientAuthError::Crl {
                path: path.clone(),
                detail: e.to_string(),
            }
        }
        _ => ClientAuthError::Verifier(e.to_string()),
    })
}

fn disk_fingerprint(auth: Option<&ClientAuth>) -> u64 {
    match auth {
        None => 0,
        Some(a) => {
            let mut paths = vec![a.ca.as_path()];
            paths.extend(a.crl.as_deref());
            certs::fingerprint(&paths)
        }
    }
}

/// What the listener verifies clients with now.
struct Active {
    settings: Option<ClientAuth>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    fingerprint: u64,
}

/// A listener's client authentication; it is the rustls verifier of its TLS configs.
pub struct ClientAuthSlot {
    active: ArcSwap<Active>,
    /// The fingerprint of the last refused files (reported once).
    refused: Mutex<Option<u64>>,
}

impl std::fmt::Debug for ClientAuthSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthSlot")
            .field("settings", &self.active.load().settings)
            .finish()
    }
}

fn active(settings: Option<&ClientAuth>) -> Result<Active, ClientAuthError> {
    let fingerprint = disk_fingerprint(settings);
    let verifier = settings.map(load_verifier).transpose()?;
    Ok(Active {
        settings: settings.cloned(),
        verifier,
        fingerprint,
    })
}

/// A finished handshake that client authentication refuses.
#[derive(Debug)]
pub struct Refused(pub String);

impl ClientAuthSlot {
    pub fn new(settings: Option<&ClientAuth>) -> Result<ClientAuthSlot, ClientAuthError> {
        Ok(ClientAuthSlot {
            active: ArcSwap::from_pointee(active(settings)?),
            refused: Mutex::new(None),
        })
    }

    /// Whether clients are asked for a certificate.
    pub fn enabled(&self) -> bool {
        self.active.load().settings.is_some()
    }

    /// Whether `settings` is what is applied (same settings, same files on disk).
    pub fn unchanged(&self, settings: Option<&ClientAuth>) -> bool {
        let a = self.active.load();
        a.settings.as_ref() == settings && a.fingerprint == disk_fingerprint(settings)
    }

    /// Verify clients with `settings` from the next handshake on. On an error the previous
    /// verifier stays.
    pub fn set(&self, settings: Option<&ClientAuth>) -> Result<(), ClientAuthError> {
        self.active.store(Arc::new(active(settings)?));
        if let Ok(mut r) = self.refused.lock() {
            *r = None;
        }
        Ok(())
    }

    /// Re-read the CA and CRL if their bytes changed. `Ok(true)`: reloaded; an error is
    /// returned once per bad state (the previous verifier stays).
    pub fn reload_from_disk(&self) -> Result<bool, ClientAuthError> {
        let current = self.active.load();
        let fingerprint = disk_fingerprint(current.settings.as_ref());
        if fingerprint == current.fingerprint {
            return Ok(false);
        }
        let Ok(mut refused) = self.refused.lock() else {
            return Ok(false);
        };
        if *refused == Some(fingerprint) {
            return Ok(false);
        }
        match active(current.settings.as_ref()) {
            Ok(fresh) => {
                self.active.store(Arc::new(fresh));
                *refused = None;
                Ok(true)
            }
            Err(e) => {
                *refused = Some(fingerprint);
                Err(e)
            }
        }
    }

    /// The CA and CRL files (for the watcher).
    pub fn paths(&self) -> Vec<PathBuf> {
        let a = self.active.load();
        a.settings
            .iter()
            .flat_map(|s| std::iter::once(s.ca.clone()).chain(s.crl.clone()))
            .collect()
    }

    /// After a handshake: the client's verified identity (`None`: no certificate, or no
    /// `client_auth`), or why the connection is refused. A resumed session carries the
    /// certificate of its first handshake: it is verified again against the current CA and
    /// CRLs, and a session without one is refused when a certificate is required now.
    pub fn admit(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        resumed: bool,
    ) -> Result<Option<Arc<ClientIdentity>>, Refused> {
        let a = self.active.load();
        let (Some(settings), Some(verifier)) = (&a.settings, &a.verifier) else {
            return Ok(None);
        };
        match chain {
            Some([leaf, rest @ ..]) => {
                if resumed {
                    verifier
                        .verify_client_cert(leaf, rest, UnixTime::now())
                        .map_err(|e| Refused(format!("resumed client certificate: {e}")))?;
                }
                Ok(Some(Arc::new(ClientIdentity::of(
                    leaf,
                    settings.forward_pem,
                ))))
            }
            _ if settings.mode == ClientAuthMode::Require => {
                Err(Refused("no client certificate".into()))
            }
            _ => Ok(None),
        }
    }
}

impl ClientCertVerifier for ClientAuthSlot {
    fn offer_client_auth(&self) -> bool {
        self.active.load().verifier.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        let a = self.active.load();
        a.settings
            .as_ref()
            .is_some_and(|s| s.mode == ClientAuthMode::Require)
    }

    /// No CA names in the CertificateRequest: the CA bundle can change under a running
    /// config (the list is borrowed from the verifier). Clients then offer any certificate
    /// they have (RFC 8446 4.2.4).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.active.load().verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client authentication is off".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &provider().signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &provider().signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `x-client-cert-subject`: the subject, RFC 4514 (`CN=alice,O=Example`).
pub static SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
/// `x-client-cert-san`: `DNS:a.example, URI:spiffe://..., email:..., IP:...`.
pub static SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
/// `x-client-cert-fingerprint`: SHA-256 of the DER, lower-case hex.
pub static FINGERPRINT: HeaderName = HeaderName::from_static("x-client-cert-fingerprint");
/// `x-client-cert`: the certificate, PEM, URL-encoded (`forward_pem: true`).
pub static PEM: HeaderName = HeaderName::from_static("x-client-cert");

/// The verified client certificate of a connection, as forwarded to backends (computed
/// once per connection).
#[derive(Debug)]
pub struct ClientIdentity {
    /// For the access log.
    pub subject: String,
    pub headers: Vec<(&'static HeaderName, HeaderValue)>,
}

impl ClientIdentity {
    pub fn of(leaf: &CertificateDer<'_>, forward_pem: bool) -> ClientIdentity {
        let (subject, san) = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, cert)) => (names::rfc4514(cert.subject()), names::san(&cert)),
            Err(_) => (String::new(), String::new()),
        };
        let fingerprint = names::sha256_hex(leaf.as_ref());
        let mut headers = Vec::with_capacity(4);
        let mut add = |name: &'static HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.push((name, v));
            }
        };
        add(&SUBJECT, &subject);
        if !san.is_empty() {
            add(&SAN, &san);
        }
        add(&FINGERPRINT, &fingerprint);
        if forward_pem {
            add(&PEM, &names::escaped_pem(leaf.as_ref()));
        }
        ClientIdentity { subject, headers }
    }
}
