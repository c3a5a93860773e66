//! TLS and HTTP-version settings: listener `tls` (certificates, alpn, strict_sni), `h2c`,
//! `redirect_https`/`https_port`, `hsts`, and pool `protocol` and `tls` (https to backends).
//! Files named here are read by `tls::config_files`, only when loading a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Issues;
use super::file::{ListenerFile, PoolFile, TlsFile, UpstreamProtocolFile, UpstreamTlsFile};
use super::model::{CertPair, Config, OcspStapling, SessionTickets};
use super::model::{Hsts, ListenerTls, Protocol, UpstreamProtocol, UpstreamTls};
use super::node::Located;

/// ALPN protocols an https listener can offer.
pub const ALPN: &[&str] = &["h2", "http/1.1"];

/// The shortest `max_age` browsers accept for the HSTS preload list (one year).
const PRELOAD_MIN_AGE: Duration = Duration::from_secs(31_536_000);

/// A listener's `tls:` block.
pub(crate) fn listener_tls(tls: &Located<TlsFile>, issues: &mut Issues) -> ListenerTls {
    let mut certificates = Vec::new();
    let acme = tls
        .value
        .acme
        .as_ref()
        .map(|a| super::acme::acme(a, issues));
    match &tls.value.certificates {
        Some(c) if c.value.is_empty() => issues.push(c.pos, "tls needs at least one certificate"),
        None if acme.is_some() => {}
        None => issues.push(tls.pos, "tls needs at least one certificate (or acme)"),
        Some(c) => {
            for pair in &c.value {
                for path in [&pair.cert, &pair.key] {
                    if path.value.trim().is_empty() {
                        issues.push(path.pos, "certificate path must not be empty");
                    }
                }
                certificates.push(CertPair {
                    cert: pair.cert.value.trim().into(),
                    key: pair.key.value.trim().into(),
                });
            }
        }
    }
    let alpn: Vec<String> = match &tls.value.alpn {
        None => ALPN.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            for p in list.iter().filter(|p| !ALPN.contains(&p.value.as_str())) {
                issues.push(
                    p.pos,
                    format!(
                        "unsupported alpn protocol \"{}\" (supported: {})",
                        p.value,
                        ALPN.join(", ")
                    ),
                );
            }
            if list.is_empty() {
                issues.push(tls.pos, "alpn must list at least one protocol");
            }
            list.iter().map(|p| p.value.clone()).collect()
        }
    };
    let mut alpn = alpn;
    if acme
        .as_ref()
        .is_some_and(|a| a.challenge == super::acme::Challenge::TlsAlpn01)
    {
        // RFC 8737: the validation handshake offers only this protocol; the resolver
        // answers it with the challenge certificate, and nothing else is served over it.
        alpn.push(super::acme::ACME_TLS_ALPN.to_string());
    }
    ListenerTls {
        certificates,
        alpn,
        strict_sni: tls.value.strict_sni.unwrap_or(false),
        acme,
        client_auth: tls
            .value
            .client_auth
            .as_ref()
            .map(|c| super::client_auth::client_auth(c, issues)),
        ocsp: ocsp(&tls.value, issues),
        session_tickets: tls
            .value
            .session_tickets
            .as_ref()
            .map(|t| SessionTickets {
                rotate: super::pool::nonzero_dur(
                    &t.rotate,
                    SessionTickets::default().rotate,
                    "session_tickets.rotate",
                    issues,
                ),
                shared: t.shared.unwrap_or(false),
            })
            .unwrap_or_default(),
    }
}

/// `ocsp_stapling` and `ocsp_responder` (plain `http://`, as OCSP responders are).
fn ocsp(tls: &TlsFile, issues: &mut Issues) -> Option<OcspStapling> {
    let responder = tls.ocsp_responder.as_ref().map(|r| {
        let url = r.value.trim();
        let ok = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|authority| !authority.is_empty())
            && url.parse::<http::Uri>().is_ok();
        if !ok {
            issues.push(
                r.pos,
                format!("ocsp_responder must be an http:// URL, got \"{url}\""),
            );
        }
        url.to_string()
    });
    match tls.ocsp_stapling {
        Some(true) => Some(OcspStapling { responder }),
        _ => {
            if let Some(r) = &tls.ocsp_responder {
                issues.push(r.pos, "ocsp_responder needs ocsp_stapling: true");
            }
            None
        }
    }
}

/// HTTP settings of a listener that depend on its protocol.
pub(crate) struct ListenerHttp {
    pub h2c: bool,
    pub redirect_https: Option<u16>,
    pub hsts: Option<Hsts>,
}

/// `h2c`, `redirect_https`, `https_port` (http listeners) and `hsts` (https listeners).
pub(crate) fn listener_http(
    file: &ListenerFile,
    protocol: Protocol,
    issues: &mut Issues,
) -> ListenerHttp {
    let name = file.name.value.trim();
    let only = |key: &str, what: &str| {
        format!("{key} is only allowed on {what} listeners (listener \"{name}\")")
    };
    let h2c = match &file.h2c {
        Some(h) if h.value && protocol != Protocol::Http => {
            issues.push(
                h.pos,
                format!("{} (https offers h2 by alpn)", only("h2c", "http")),
            );
            false
        }
        Some(h) => h.value,
        None => false,
    };
    let redirect = file.redirect_https.as_ref().filter(|r| r.value);
    if let Some(r) = redirect.filter(|_| protocol != Protocol::Http) {
        issues.push(r.pos, only("redirect_https", "http"));
    }
    let port = match &file.https_port {
        Some(p) if redirect.is_none() => {
            issues.push(p.pos, "https_port needs redirect_https: true");
            443
        }
        Some(p) => match u16::try_from(p.value) {
            Ok(port) if port > 0 => port,
            _ => {
                issues.push(
                    p.pos,
                    format!("https_port must be between 1 and 65535, got {}", p.value),
                );
                443
            }
        },
        None => 443,
    };
    let hsts = file.hsts.as_ref().and_then(|h| {
        if protocol != Protocol::Https {
            issues.push(h.pos, only("hsts", "https"));
            return None;
        }
        let max_age = h
            .value
            .max_age
            .as_ref()
            .map_or(PRELOAD_MIN_AGE, |a| a.value.0);
        let hsts = Hsts {
            max_age,
            include_subdomains: h.value.include_subdomains.unwrap_or(false),
            preload: h.value.preload.unwrap_or(false),
        };
        if hsts.preload && (!hsts.include_subdomains || hsts.max_age < PRELOAD_MIN_AGE) {
            issues.push(
                h.pos,
                "hsts preload needs include_subdomains: true and max_age of at least 365d",
            );
        }
        Some(hsts)
    });
    ListenerHttp {
        h2c,
        redirect_https: redirect.map(|_| port),
        hsts,
    }
}

/// A pool's `protocol` and `tls`.
pub(crate) fn pool_upstream(
    file: &PoolFile,
    issues: &mut Issues,
) -> (UpstreamProtocol, Option<UpstreamTls>) {
    let protocol = match file.protocol.as_ref().map(|p| p.value) {
        None | Some(UpstreamProtocolFile::H1) => UpstreamProtocol::H1,
        Some(UpstreamProtocolFile::H2) => UpstreamProtocol::H2,
    };
    let tls = file.tls.as_ref().map(|t| upstream_tls(&t.value, issues));
    (protocol, tls)
}

fn upstream_tls(file: &UpstreamTlsFile, issues: &mut Issues) -> UpstreamTls {
    let c = client_tls(
        [&file.ca, &file.client_cert, &file.client_key],
        &file.sni,
        issues,
    );
    UpstreamTls {
        sni: c.sni,
        ca: c.ca,
        verify: file.verify.unwrap_or(true),
        client_cert: c.client_cert,
        client_key: c.client_key,
    }
}

/// The TLS settings of a client connection (to a backend, to Redis), validated.
pub(crate) struct ClientTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Lower case.
    pub sni: Option<String>,
}

/// Validates `ca`, `client_cert`, `client_key` (non-empty paths; a certificate needs its
/// key and the other way round) and `sni` (a DNS name or an IP address).
pub(crate) fn client_tls(
    [ca, client_cert, client_key]: [&Option<Located<String>>; 3],
    sni: &Option<Located<String>>,
    issues: &mut Issues,
) -> ClientTls {
    let mut path = |field: &Option<Located<String>>, what: &str| -> Option<PathBuf> {
        let f = field.as_ref()?;
        let p = f.value.trim();
        if p.is_empty() {
            issues.push(f.pos, format!("{what} path must not be empty"));
            return None;
        }
        Some(PathBuf::from(p))
    };
    let ca_path = path(ca, "ca");
    let cert_path = path(client_cert, "client_cert");
    let key_path = path(client_key, "client_key");
    match (client_cert, client_key) {
        (Some(c), None) => issues.push(c.pos, "client_cert needs client_key"),
        (None, Some(k)) => issues.push(k.pos, "client_key needs client_cert"),
        _ => {}
    }
    let sni = sni.as_ref().and_then(|s| {
        let name = s.value.trim();
        match rustls_pki_types::ServerName::try_from(name) {
            Ok(_) => Some(name.to_ascii_lowercase()),
            Err(_) => {
                issues.push(
                    s.pos,
                    format!(
                        "invalid sni \"{}\" (expected a DNS name or an IP address)",
                        s.value
                    ),
                );
                None
            }
        }
    });
    ClientTls {
        ca: ca_path,
        client_cert: cert_path,
        client_key: key_path,
        sni,
    }
}

/// Relative certificate, key and CA paths resolve against the config file's directory.
pub(crate) fn rebase_paths(config: &mut Config, base: &Path) {
    for tls in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
        for pair in &mut tls.certificates {
            pair.cert = base.join(&pair.cert);
            pair.key = base.join(&pair.key);
        }
        if let Some(acme) = tls.acme.as_mut() {
            for path in std::iter::once(&mut acme.storage).chain(acme.ca.as_mut()) {
                *path = base.join(&*path);
            }
        }
        if let Some(auth) = tls.client_auth.as_mut() {
            auth.ca = base.join(&auth.ca);
            if let Some(crl) = auth.crl.as_mut() {
                *crl = base.join(&*crl);
            }
        }
    }
    for tls in config.pools.iter_mut().filter_map(|p| p.tls.as_mut()) {
        for path in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
            .into_iter()
            .flatten()
        {
            *path = base.join(&*path);
        }
    }
    if let super::model::State::Redis(redis) = &mut config.state {
        if let Some(tls) = redis.tls.as_mut() {
            for path in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
                .into_iter()
                .flatten()
            {
                *path = base.join(&*path);
            }
        }
    }
}
