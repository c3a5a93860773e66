//! Reading certificate/key pairs and CA bundles: PEM parsing, key loading, the check that a
//! key matches its certificate, the names SNI selects by, validity dates, and a fingerprint of
//! the files to notice changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::provider;

/// Which file of a pair an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Cert,
    Key,
}

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        side: Side,
        source: std::io::Error,
    },
    #[error("{what} {}: invalid PEM: {detail}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        side: Side,
        detail: String,
    },
    #[error("{what} {}: no certificate found{hint}", path.display())]
    NoCertificate {
        what: &'static str,
        path: PathBuf,
        side: Side,
        hint: &'static str,
    },
    #[error("certificate {}: not a valid X.509 certificate: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("key {}: no private key found{hint}", path.display())]
    NoKey { path: PathBuf, hint: &'static str },
    #[error("key {}: unsupported or invalid private key: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("key {} does not match certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    /// The file of the pair the error is about (a mismatch is reported on the key).
    pub fn side(&self) -> Side {
        match self {
            CertError::Read { side, .. }
            | CertError::Pem { side, .. }
            | CertError::NoCertificate { side, .. } => *side,
            CertError::BadCertificate { .. } => Side::Cert,
            CertError::NoKey { .. } | CertError::BadKey { .. } | CertError::Mismatch { .. } => {
                Side::Key
            }
        }
    }
}

const PEM_CERT_HINT: &str = " (expected a PEM \"-----BEGIN CERTIFICATE-----\" block)";
const DER_HINT: &str =
    " (the file looks like DER: convert it to PEM, e.g. `openssl x509 -inform der`)";
const PEM_KEY_HINT: &str =
    " (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)";

/// A certificate chain and its key, checked and ready to serve.
#[derive(Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names of the leaf (SAN, else the subject CN); `*.` for wildcards.
    pub names: Vec<String>,
    /// Validity of the leaf, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The same dates as text, for messages.
    pub not_before_text: String,
    pub not_after_text: String,
    /// `fingerprint(&[cert, key])` of the bytes that were loaded.
    pub fingerprint: u64,
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPair")
            .field("cert", &self.cert_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after_text)
            .finish()
    }
}

impl LoadedPair {
    /// A warning when the leaf is expired or not valid yet (served anyway).
    pub fn validity_warning(&self) -> Option<String> {
        let now = unix_now();
        let path = self.cert_path.display();
        if now > self.not_after {
            Some(format!(
                "certificate {path} expired on {} (clients will refuse it)",
                self.not_after_text
            ))
        } else if now < self.not_before {
            Some(format!(
                "certificate {path} is not valid before {} (clients will refuse it)",
                self.not_before_text
            ))
        } else {
            None
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read(path: &Path, what: &'static str, side: Side) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        what,
        path: path.to_path_buf(),
        side,
        source,
    })
}

/// The certificates of a PEM file (a chain, or a CA bundle), in order.
pub fn parse_certificates(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
    side: Side,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs: Result<Vec<_>, pem::Error> = CertificateDer::pem_slice_iter(bytes).collect();
    let certs = certs.map_err(|e| CertError::Pem {
        what,
        path: path.to_path_buf(),
        side,
        detail: pem_detail(&e),
    })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            what,
            path: path.to_path_buf(),
            side,
            hint: if bytes.first() == Some(&0x30) {
                DER_HINT
            } else {
                PEM_CERT_HINT
            },
        });
    }
    for der in &certs {
        if let Err(e) = X509Certificate::from_der(der) {
            return Err(CertError::BadCertificate {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
    }
    Ok(certs)
}

fn pem_detail(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "missing \"-----END {}-----\"",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => "malformed \"-----BEGIN\" line".to_string(),
        pem::Error::Base64Decode(_) => "bad base64 inside a PEM block".to_string(),
        other => format!("{other:?}"),
    }
}

/// The first private key of a PEM file.
fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => Err(CertError::NoKey {
            path: path.to_path_buf(),
            hint: if bytes.first() == Some(&0x30) {
                " (the file looks like DER: convert it to PEM)"
            } else {
                PEM_KEY_HINT
            },
        }),
        Err(e) => Err(CertError::Pem {
            what: "key",
            path: path.to_path_buf(),
            side: Side::Key,
            detail: pem_detail(&e),
        }),
    }
}

/// Read and check a certificate chain (leaf first) and its private key. The cert and key may
/// be the same file (HAProxy's combined PEM).
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedPair, CertError> {
    let cert_bytes = read(cert, "certificate", Side::Cert)?;
    let key_bytes = if key == cert {
        cert_bytes.clone()
    } else {
        read(key, "key", Side::Key)?
    };
    let chain = parse_certificates(&cert_bytes, cert, "certificate", Side::Cert)?;
    let key_der = parse_key(&key_bytes, key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| CertError::BadKey {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(CertError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(CertError::BadCertificate {
                path: cert.to_path_buf(),
                detail: e.to_string(),
            })
        }
    }
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| CertError::BadCertificate {
            path: cert.to_path_buf(),
            detail: "empty chain".into(),
        })?;
    let (_, parsed) = X509Certificate::from_der(leaf).map_err(|e| CertError::BadCertificate {
        path: cert.to_path_buf(),
        detail: e.to_string(),
    })?;
    let validity = parsed.validity();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for bytes in [&cert_bytes, &key_bytes] {
        hasher.update(bytes);
        hasher.update(b"\0");
    }
    Ok(LoadedPair {
        names: names_of(&parsed),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        not_before_text: validity.not_before.to_string(),
        not_after_text: validity.not_after.to_string(),
        fingerprint: hasher.digest(),
        cert_path: cert.to_path_buf(),
        key: Arc::new(certified),
    })
}

/// DNS names of the SAN extension, else the subject's common names; lower-case, no final dot.
fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_string),
        );
    }
    let mut out: Vec<String> = names
        .into_iter()
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    out.dedup();
    out
}

/// The certificates of a CA bundle (for verifying backends).
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path, "ca", Side::Cert)?;
    parse_certificates(&bytes, path, "ca", Side::Cert)
}

/// A client certificate chain and key (mTLS to backends), checked like a server pair.
pub fn load_client_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let pair = load_pair(cert, key)?;
    let key_bytes = read(key, "key", Side::Key)?;
    Ok((pair.key.cert.clone(), parse_key(&key_bytes, key)?))
}

/// xxh3 of the files' bytes, or of the first read error (so a persisting error is one event).
pub fn fingerprint(paths: &[&Path]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for p in paths {
        match std::fs::read(p) {
            Ok(bytes) => hasher.update(&bytes),
            Err(e) => hasher.update(e.to_string().as_bytes()),
        }
        hasher.update(b"\0");
    }
    hasher.digest()
}
