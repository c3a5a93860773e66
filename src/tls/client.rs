//! TLS to backends: a rustls `ClientConfig` per pool `tls:` block (CA bundle or the system's,
//! or no verification; a client certificate for mTLS; ALPN from the pool's protocol), and the
//! server name each backend is verified against.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certs::{self, CertError};
use super::provider;
use crate::config::{UpstreamProtocol, UpstreamTls};

/// Where CA bundles usually are (what OpenSSL and rustls-native-certs look at on Linux).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Which setting of a pool's `tls:` an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Tls,
    Ca,
    ClientCert,
    ClientKey,
}

/// Why a pool's `tls:` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{source}")]
    File { field: Field, source: CertError },
    #[error("verify is on but no ca is set and no system CA bundle was found (set SSL_CERT_FILE or tls.ca)")]
    NoSystemRoots,
    #[error("ca {}: none of its certificates is a usable CA", .0.display())]
    NoUsableCa(PathBuf),
    #[error("tls settings refused by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ClientTlsError {
    pub fn field(&self) -> Field {
        match self {
            ClientTlsError::File { field, .. } => *field,
            ClientTlsError::NoUsableCa(_) => Field::Ca,
            _ => Field::Tls,
        }
    }
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first usual path that parses.
static SYSTEM_ROOTS: LazyLock<Option<Arc<RootCertStore>>> = LazyLock::new(|| {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(certs) = certs::load_ca(&path) {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added > 0 {
                return Some(Arc::new(roots));
            }
        }
    }
    None
});

fn roots(ca: Option<&Path>) -> Result<Arc<RootCertStore>, ClientTlsError> {
    match ca {
        Some(path) => {
            let certs = certs::load_ca(path).map_err(|source| ClientTlsError::File {
                field: Field::Ca,
                source,
            })?;
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ClientTlsError::NoUsableCa(path.to_path_buf()));
            }
            Ok(Arc::new(roots))
        }
        None => SYSTEM_ROOTS.clone().ok_or(ClientTlsError::NoSystemRoots),
    }
}

/// The rustls client config of a pool's `tls:` (reads the CA and client files).
pub fn client_config(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots(tls.ca.as_deref())?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = certs::load_client_pair(cert, key).map_err(|source| {
                let field = match source.side() {
                    certs::Side::Cert => Field::ClientCert,
                    certs::Side::Key => Field::ClientKey,
                };
                ClientTlsError::File { field, source }
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(config))
}

/// The name a backend is asked for (SNI) and verified against: `sni`, else the host of its
/// configured address (an IP address sends no SNI and is checked against IP SANs); the
/// resolved `addr` when the host is not a valid name.
pub fn server_name(tls: &UpstreamTls, address: &str, addr: SocketAddr) -> ServerName<'static> {
    let host = tls
        .sni
        .clone()
        .unwrap_or_else(|| host_of(address).to_string());
    ServerName::try_from(host).unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// `verify: false`: any certificate is accepted; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_default_to_the_backend_host() {
        let ip: SocketAddr = ([10, 0, 0, 1], 8443).into();
        let tls = UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            client_cert: None,
            client_key: None,
        };
        assert_eq!(
            server_name(&tls, "app.internal:8443", ip).to_str(),
            "app.internal"
        );
        assert_eq!(
            server_name(&tls, "127.0.0.1:8443", ip).to_str(),
            "127.0.0.1"
        );
        assert_eq!(server_name(&tls, "[::1]:8443", ip).to_str(), "::1");
        let named = UpstreamTls {
            sni: Some("api.example".into()),
            ..tls
        };
        assert_eq!(
            server_name(&named, "127.0.0.1:8443", ip).to_str(),
            "api.example"
        );
    }
}
