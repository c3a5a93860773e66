//! A listener's `tls.acme:` (certificates obtained and renewed by ACME, RFC 8555): the file
//! type, the validated model, and its checks (directory URL, contact, domain names,
//! challenge type, CA bundle and storage paths, renewal margin).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::Dur;
use super::node::Located;

/// The renewal margin when `renew_before` is not set (a 90-day certificate is renewed
/// after 60 days, as Let's Encrypt advises).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Where certificates and the account key go when `storage` is not set (relative to the
/// config file's directory).
pub const DEFAULT_STORAGE: &str = "acme";

/// The ALPN protocol of tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &str = "acme-tls/1";

/// How the ACME server validates control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `http://NAME/.well-known/acme-challenge/TOKEN` on port 80 (autolb's http listeners).
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on port 443 (this https listener).
    TlsAlpn01,
}

impl Challenge {
    pub fn name(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `tls.acme:`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// The ACME server's directory URL (https).
    pub directory: String,
    /// The account's contact (`mailto:` is added).
    pub email: Option<String>,
    /// The names of the certificate (lower case, no wildcard): the first is its subject.
    pub domains: Vec<String>,
    pub challenge: Challenge,
    /// CA bundle that verifies the ACME server (else the system's).
    pub ca: Option<PathBuf>,
    /// Directory of the account key and the certificates (created 0700, files 0600).
    pub storage: PathBuf,
    /// Renew when the certificate expires within this.
    pub renew_before: Duration,
}

/// `tls.acme:` in the file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an acme mapping (directory, email, domains, challenge, ca, storage, renew_before)"
)]
pub struct AcmeFile {
    pub directory: Option<Located<String>>,
    pub email: Option<Located<String>>,
    pub domains: Option<Located<Vec<Located<String>>>>,
    pub challenge: Option<Located<String>>,
    pub ca: Option<Located<String>>,
    pub storage: Option<Located<String>>,
    pub renew_before: Option<Located<Dur>>,
}

/// A DNS name an ACME server can validate by http-01 or tls-alpn-01 (no wildcard, no IP).
fn valid_domain(name: &str) -> bool {
    name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Validate `tls.acme:` (`at`: where the block starts).
pub(crate) fn acme(file: &Located<AcmeFile>, issues: &mut Issues) -> Acme {
    let f = &file.value;
    let directory = match &f.directory {
        None => {
            issues.push(file.pos, "acme needs a directory (the ACME server's URL)");
            String::new()
        }
        Some(d) => {
            let url = d.value.trim();
            match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
                _ => issues.push(
                    d.pos,
                    format!("acme directory must be an https URL, got \"{}\"", d.value),
                ),
            }
            url.to_string()
        }
    };
    let email = f.email.as_ref().and_then(|e| {
        let v = e.value.trim().trim_start_matches("mailto:");
        let ok = v
            .split_once('@')
            .is_some_and(|(u, h)| !u.is_empty() && !h.is_empty() && !v.contains([' ', ',']));
        if !ok {
            issues.push(e.pos, format!("invalid acme email \"{}\"", e.value));
            return None;
        }
        Some(v.to_string())
    });
    let mut domains: Vec<String> = Vec::new();
    match &f.domains {
        None => issues.push(file.pos, "acme needs at least one domain"),
        Some(list) if list.value.is_empty() => {
            issues.push(list.pos, "acme needs at least one domain")
        }
        Some(list) => {
            for d in &list.value {
                let name = d.value.trim().trim_end_matches('.').to_ascii_lowercase();
                if name.starts_with("*.") {
                    issues.push(
                        d.pos,
                        format!(
                            "acme domain \"{}\": wildcards need dns-01, which autolb does not do",
                            d.value
                        ),
                    );
                } else if !valid_domain(&name) {
                    issues.push(d.pos, format!("invalid acme domain \"{}\"", d.value));
                } else if domains.contains(&name) {
                    issues.push(d.pos, format!("acme domain \"{name}\" is listed twice"));
                } else {
                    domains.push(name);
                }
            }
        }
    }
    let challenge = match f.challenge.as_ref().map(|c| c.value.trim()) {
        None | Some("http-01") => Challenge::Http01,
        Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some(other) => {
            let at = f.challenge.as_ref().map_or(file.pos, |c| c.pos);
            issues.push(
                at,
                format!("unknown acme challenge \"{other}\" (expected http-01 or tls-alpn-01)"),
            );
            Challenge::Http01
        }
    };
    let mut path = |field: &Option<Located<String>>, what: &str| -> Option<PathBuf> {
        let f = field.as_ref()?;
        let p = f.value.trim();
        if p.is_empty() {
            issues.push(f.pos, format!("acme {what} path must not be empty"));
            return None;
        }
        Some(PathBuf::from(p))
    };
    let ca = path(&f.ca, "ca");
    let storage = path(&f.storage, "storage").unwrap_or_else(|| DEFAULT_STORAGE.into());
    let renew_before = super::pool::nonzero_dur(
        &f.renew_before,
        DEFAULT_RENEW_BEFORE,
        "acme renew_before",
        issues,
    );
    Acme {
        directory,
        email,
        domains,
        challenge,
        ca,
        storage,
        renew_before,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_domain;
    use super::{Acme, Challenge, DEFAULT_RENEW_BEFORE};
    use crate::config::tests::{assert_error, load};
    use crate::config::tests_errors::BASE;

    fn with_acme(acme: &str) -> String {
        BASE.replace(
            "    pool: web\n",
            &format!("    pool: web\n    protocol: https\n    tls:\n      acme: {acme}\n"),
        )
    }

    #[test]
    fn acme_alone_is_enough_and_takes_defaults() {
        let c = load(&with_acme(
            "{ directory: \"https://ca.test/dir\", domains: [A.Example.com, www.example.com] }",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let tls = c.listeners[0].tls.as_ref().expect("tls");
        assert!(tls.certificates.is_empty());
        let acme: &Acme = tls.acme.as_ref().expect("acme");
        assert_eq!(acme.domains, ["a.example.com", "www.example.com"]);
        assert_eq!(acme.challenge, Challenge::Http01);
        assert_eq!(acme.renew_before, DEFAULT_RENEW_BEFORE);
        assert!(acme.storage.ends_with("acme"), "{:?}", acme.storage);
        assert!(!tls.alpn.iter().any(|p| p == "acme-tls/1"));
        let c = load(&with_acme(
            "{ directory: \"https://ca.test/dir\", domains: [a.test], challenge: tls-alpn-01 }",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let tls = c.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.alpn, ["h2", "http/1.1", "acme-tls/1"]);
    }

    #[test]
    fn acme_errors_point_at_the_value() {
        let ok_dir = "directory: \"https://ca.test/dir\"";
        for (acme, needle, message) in [
            (
                "{ domains: [a.test] }",
                "{ domains",
                "acme needs a directory",
            ),
            (
                "{ directory: \"http://ca.test/dir\", domains: [a.test] }",
                "\"http://",
                "must be an https URL",
            ),
            (
                &format!("{{ {ok_dir}, domains: [] }}"),
                "[]",
                "at least one domain",
            ),
            (
                &format!("{{ {ok_dir}, domains: [\"*.a.test\"] }}"),
                "\"*.a.test\"",
                "wildcards need dns-01",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test, a.test] }}"),
                "a.test]",
                "listed twice",
            ),
            (
                &format!("{{ {ok_dir}, domains: [\"a b\"] }}"),
                "\"a b\"",
                "invalid acme domain",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test], challenge: dns-01 }}"),
                "dns-01",
                "unknown acme challenge",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test], email: nobody }}"),
                "nobody",
                "invalid acme email",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test], renew_before: 0s }}"),
                "0s",
                "greater than 0",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test], storage: \"\" }}"),
                "\"\"",
                "storage path must not be empty",
            ),
            (
                &format!("{{ {ok_dir}, domains: [a.test], dns: x }}"),
                "dns",
                "unknown field",
            ),
        ] {
            assert_error(&with_acme(acme), needle, message);
        }
    }

    #[test]
    fn domains_acme_can_validate() {
        assert!(valid_domain("example.com"));
        assert!(valid_domain("a-b.example"));
        assert!(valid_domain("localhost"));
        assert!(!valid_domain("127.0.0.1"));
        assert!(!valid_domain("a..b"));
        assert!(!valid_domain("-a.example"));
        assert!(!valid_domain("a_b.example"));
        assert!(!valid_domain(""));
    }
}
