//! `alerts:` (a JSON webhook and/or email for health, scaling, reload and certificate
//! events): the file type, the validated model, and its checks (URL, event names, timings;
//! the email part is `alerts_email`).

use std::time::Duration;

use serde::Deserialize;

use super::error::{Issues, Pos};
use super::file::Dur;
use super::node::Located;
use super::pool::{nonzero, nonzero_dur, or};

/// What can be alerted on, as named in `alerts.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// An active health check took a backend down.
    BackendDown,
    /// An active health check brought a backend back.
    BackendUp,
    /// Outlier detection ejected a backend.
    BackendEjected,
    /// A pool has no usable backend left.
    PoolDown,
    /// A pool that was down has a usable backend again.
    PoolUp,
    /// The autoscaler changed a pool's size.
    Scaling,
    /// A config reload was refused (the running config kept serving).
    ReloadFailed,
    /// A served certificate expires within `certificate_days` (or has expired).
    CertificateExpiry,
    /// An ACME order failed (the old certificate, if any, keeps serving).
    AcmeFailed,
    /// No good OCSP response could be fetched for a served certificate, or it is revoked.
    OcspFailed,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::BackendDown,
        AlertKind::BackendUp,
        AlertKind::BackendEjected,
        AlertKind::PoolDown,
        AlertKind::PoolUp,
        AlertKind::Scaling,
        AlertKind::ReloadFailed,
        AlertKind::CertificateExpiry,
        AlertKind::AcmeFailed,
        AlertKind::OcspFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::BackendDown => "backend_down",
            AlertKind::BackendUp => "backend_up",
            AlertKind::BackendEjected => "backend_ejected",
            AlertKind::PoolDown => "pool_down",
            AlertKind::PoolUp => "pool_up",
            AlertKind::Scaling => "scaling",
            AlertKind::ReloadFailed => "reload_failed",
            AlertKind::CertificateExpiry => "certificate_expiry",
            AlertKind::AcmeFailed => "acme_failed",
            AlertKind::OcspFailed => "ocsp_failed",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A webhook URL, split for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// As written (shown in logs without its query, which may hold a secret).
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookUrl {
    /// The `Host` field for a request to it (the port only when not the scheme's default).
    pub fn host_header(&self) -> String {
        let default_port = if self.https { 443 } else { 80 };
        match (self.host.contains(':'), self.port == default_port) {
            (true, true) => format!("[{}]", self.host),
            (true, false) => format!("[{}]:{}", self.host, self.port),
            (false, true) => self.host.clone(),
            (false, false) => format!("{}:{}", self.host, self.port),
        }
    }

    /// `scheme://host:port/path`, without the query.
    pub fn redacted(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let path = self.path.split('?').next().unwrap_or("/");
        format!("{scheme}://{}:{}{path}", self.host, self.port)
    }
}

/// `alerts:`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    /// At least one of `webhook` and `email`.
    pub webhook: Option<WebhookUrl>,
    pub email: Option<super::alerts_email::Email>,
    /// The kinds sent (default: all).
    pub events: Vec<AlertKind>,
    /// Alerts raised within this window go out in one POST (default 2s).
    pub batch: Duration,
    /// Time for one POST, connect to response (default 5s).
    pub timeout: Duration,
    /// Further attempts after a failed POST (default 5), ...
    pub retries: u32,
    /// ... waiting this long before the first, doubling up to 60s (default 1s).
    pub backoff: Duration,
    /// Certificates expiring within this many days are alerted on, daily (default 14).
    pub certificate_days: u32,
    /// Environment variable holding a bearer token sent as `Authorization`.
    pub token_env: Option<String>,
}

impl Alerts {
    pub fn wants(&self, kind: AlertKind) -> bool {
        self.events.contains(&kind)
    }
}

/// `alerts:` in the file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an alerts mapping (webhook, email, events, batch, timeout, retries, backoff, certificate_days, token_env)"
)]
pub struct AlertsFile {
    pub webhook: Option<Located<String>>,
    pub email: Option<Located<super::alerts_email::EmailFile>>,
    pub events: Option<Vec<Located<String>>>,
    pub batch: Option<Located<Dur>>,
    pub timeout: Option<Located<Dur>>,
    pub retries: Option<Located<u32>>,
    pub backoff: Option<Located<Dur>>,
    pub certificate_days: Option<Located<u32>>,
    pub token_env: Option<Located<String>>,
}

/// `http://HOST[:PORT][/path]` or `https://...`.
pub(crate) fn parse_webhook(s: &str) -> Result<WebhookUrl, String> {
    parse_http_url(s, "webhook")
}

/// `http://HOST[:PORT][/path]` or `https://...`, for the setting `what`.
pub(crate) fn parse_http_url(s: &str, what: &str) -> Result<WebhookUrl, String> {
    let bad = |why: &str| format!("invalid {what} \"{s}\": {why}");
    let uri: http::Uri = s.trim().parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("expected an http:// or https:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user:password@ is not supported; use token_env"));
    }
    let host = authority.host().trim_matches(['[', ']']).to_string();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err(bad("port 0"));
    }
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.as_str().to_string());
    Ok(WebhookUrl {
        url: s.trim().to_string(),
        https,
        host,
        port,
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// Validates `alerts:` (at `pos`); `None` after recording the issues.
pub(crate) fn alerts(file: AlertsFile, pos: Pos, issues: &mut Issues) -> Option<Alerts> {
    let before = issues.len();
    if file.webhook.is_none() && file.email.is_none() {
        issues.push(
            pos,
            "alerts needs a webhook (e.g. https://hooks.example.com/autolb) or an email (smtp, from, to)",
        );
    }
    let webhook = file.webhook.as_ref().map(|w| {
        parse_webhook(&w.value)
            .map_err(|m| issues.push(w.pos, m))
            .ok()
    });
    let email = file
        .email
        .map(|e| super::alerts_email::email(e.value, e.pos, issues));
    let events = match &file.events {
        None => AlertKind::ALL.to_vec(),
        Some(list) => {
            let mut kinds = Vec::new();
            for e in list {
                match AlertKind::parse(e.value.trim()) {
                    Some(k) if !kinds.contains(&k) => kinds.push(k),
                    Some(_) => {}
                    None => issues.push(
                        e.pos,
                        format!(
                            "unknown alert event \"{}\", expected one of: {}",
                            e.value,
                            AlertKind::ALL.map(AlertKind::name).join(", ")
                        ),
                    ),
                }
            }
            kinds
        }
    };
    if let Some(t) = &file.token_env {
        if t.value.is_empty() || t.value.contains(['=', '\0']) {
            issues.push(
                t.pos,
                format!("invalid environment variable name \"{}\"", t.value),
            );
        }
    }
    let secs = Duration::from_secs;
    let batch = nonzero_dur(&file.batch, secs(2), "alerts batch", issues);
    let timeout = nonzero_dur(&file.timeout, secs(5), "alerts timeout", issues);
    let backoff = nonzero_dur(&file.backoff, secs(1), "alerts backoff", issues);
    let certificate_days = nonzero(
        &file.certificate_days,
        14,
        "alerts certificate_days",
        issues,
    );
    let retries = or(&file.retries, 5);
    if let Some(r) = file.retries.as_ref().filter(|r| r.value > 20) {
        issues.push(
            r.pos,
            format!("alerts retries must be at most 20, got {}", r.value),
        );
    }
    (issues.len() == before).then_some(Alerts {
        webhook: webhook.flatten(),
        email: email.flatten(),
        events,
        batch,
        timeout,
        retries,
        backoff,
        certificate_days,
        token_env: file.token_env.map(|t| t.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let w = parse_webhook("https://hooks.example.com/a/b?k=secret").expect("url");
        assert!(w.https);
        assert_eq!((w.host.as_str(), w.port), ("hooks.example.com", 443));
        assert_eq!(w.path, "/a/b?k=secret");
        assert_eq!(w.redacted(), "https://hooks.example.com:443/a/b");
        let w = parse_webhook("http://127.0.0.1:9000").expect("url");
        assert_eq!((w.port, w.path.as_str()), (9000, "/"));
        let w = parse_webhook("http://[::1]:9000/x").expect("url");
        assert_eq!(w.host, "::1");
        for bad in [
            "ftp://x/",
            "hooks.example.com/x",
            "http://u:p@x/",
            "http://x:0/",
            "",
        ] {
            assert!(parse_webhook(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.name()), Some(k));
        }
    }
}
