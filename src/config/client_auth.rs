//! Client certificates (mTLS) on https listeners: `tls.client_auth: {mode, ca, crl,
//! forward_pem}` and a route's `client_cert: required`, validated. The files are read by
//! `tls::config_files` (when a file is loaded) and by `tls::client_auth` (to serve).

use std::path::PathBuf;

use serde::Deserialize;

use super::error::Issues;
use super::node::Located;

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// The handshake fails without a certificate the CA signed.
    Require,
    /// A certificate is asked for; without one the connection is served (routes with
    /// `client_cert: required` answer 403); a bad one still fails the handshake.
    Optional,
}

/// `tls.client_auth` of an https listener (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// PEM file of certificate revocation lists (one or more), checked for every
    /// certificate of the chain whose issuer published one.
    pub crl: Option<PathBuf>,
    /// Also forward the client's certificate (`X-Client-Cert`, URL-encoded PEM).
    pub forward_pem: bool,
}

/// `tls.client_auth:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a client_auth mapping (mode, ca, crl, forward_pem)"
)]
pub struct ClientAuthFile {
    pub mode: Option<Located<ClientAuthMode>>,
    pub ca: Option<Located<String>>,
    pub crl: Option<Located<String>>,
    pub forward_pem: Option<Located<bool>>,
}

/// `routes[].client_cert:` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertFile {
    /// Requests without a verified client certificate get a 403.
    Required,
    /// The default: a certificate is not needed.
    Optional,
}

/// Validates `tls.client_auth` (`ca` is required; paths non-empty).
pub(crate) fn client_auth(file: &Located<ClientAuthFile>, issues: &mut Issues) -> ClientAuth {
    let mut path = |field: &Option<Located<String>>, what: &str| -> Option<PathBuf> {
        let f = field.as_ref()?;
        let p = f.value.trim();
        if p.is_empty() {
            issues.push(f.pos, format!("client_auth.{what} path must not be empty"));
            return None;
        }
        Some(PathBuf::from(p))
    };
    let ca = path(&file.value.ca, "ca");
    let crl = path(&file.value.crl, "crl");
    if file.value.ca.is_none() {
        issues.push(
            file.pos,
            "client_auth needs ca (the CA bundle client certificates must chain to)",
        );
    }
    ClientAuth {
        mode: file
            .value
            .mode
            .as_ref()
            .map_or(ClientAuthMode::Require, |m| m.value),
        ca: ca.unwrap_or_default(),
        crl,
        forward_pem: file.value.forward_pem.as_ref().is_some_and(|f| f.value),
    }
}

/// A route's `client_cert`: whether it requires a verified client certificate.
pub(crate) fn route_client_cert(file: Option<&Located<ClientCertFile>>) -> bool {
    file.is_some_and(|c| c.value == ClientCertFile::Required)
}
