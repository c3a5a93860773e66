//! What ACME serves from memory: each managed listener's certificate (a `CertSource` for the
//! listener's SNI resolver) and the pending challenges (http-01 key authorizations by
//! token, tls-alpn-01 validation certificates by name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;

use crate::tls::certs::LoadedPair;
use crate::tls::resolver::CertSource;

use super::AcmeError;

/// The challenges this node answers now.
#[derive(Default)]
pub struct Challenges {
    /// http-01: token -> key authorization.
    http: Mutex<HashMap<String, String>>,
    /// tls-alpn-01: DNS name -> validation certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn put_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub fn remove_http(&self, token: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.remove(token);
        }
    }

    /// The key authorization for `token`, if this node has it.
    pub fn http(&self, token: &str) -> Option<String> {
        self.http.lock().ok()?.get(token).cloned()
    }

    /// Answer tls-alpn-01 for `name` with a certificate carrying `digest` (SHA-256 of the
    /// key authorization) in its acmeIdentifier extension (RFC 8737 3).
    pub fn put_alpn(&self, name: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let cert = alpn_certificate(name, digest)?;
        if let Ok(mut m) = self.alpn.lock() {
            m.insert(name.to_string(), cert);
        }
        Ok(())
    }

    pub fn remove_alpn(&self, name: &str) {
        if let Ok(mut m) = self.alpn.lock() {
            m.remove(name);
        }
    }

    fn alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.lock().ok()?.get(name).cloned()
    }
}

/// A self-signed certificate for `name` with the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let rc = |e: rcgen::Error| AcmeError::Challenge(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(rc)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(rc)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(rc)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Challenge(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// One https listener's ACME certificate, as its resolver asks for it.
pub struct Served {
    pub current: ArcSwapOption<LoadedPair>,
    challenges: Arc<Challenges>,
}

impl Served {
    pub fn new(current: Option<LoadedPair>, challenges: Arc<Challenges>) -> Served {
        Served {
            current: ArcSwapOption::from_pointee(current),
            challenges,
        }
    }

    /// Serve `pair` from the next handshake on.
    pub fn swap(&self, pair: LoadedPair) {
        self.current.store(Some(Arc::new(pair)));
    }
}

impl CertSource for Served {
    fn resolve(&self, sni: Option<&str>, exact: bool, acme_tls: bool) -> Option<Arc<CertifiedKey>> {
        if acme_tls {
            let name = sni?.trim_end_matches('.').to_ascii_lowercase();
            return self.challenges.alpn(&name);
        }
        let current = self.current.load();
        let pair = current.as_ref()?;
        if !exact {
            return Some(pair.key.clone());
        }
        let sni = sni?;
        let sni = sni.trim_end_matches('.');
        pair.names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(sni))
            .then(|| pair.key.clone())
    }
}
