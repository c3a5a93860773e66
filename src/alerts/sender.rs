//! The alert sender: one task that batches queued alerts (`alerts.batch`), keeps those the
//! running config asks for, and POSTs them as one JSON document to the webhook (http or
//! https, HTTP/1.1), retrying failed POSTs with exponential backoff.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Alert, MAX_BATCH};
use crate::config::{Alerts, UpstreamProtocol, UpstreamTls, WebhookUrl};
use crate::runtime::Runtime;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
}

impl PostError {
    /// A 4xx other than 408 and 429 will not get better by sending again.
    fn permanent(&self) -> bool {
        matches!(self, PostError::Status { status, .. }
            if status.is_client_error()
                && *status != StatusCode::REQUEST_TIMEOUT
                && *status != StatusCode::TOO_MANY_REQUESTS)
    }
}

/// Run until the queue closes (the process ends).
pub async fn run(
    runtime: Arc<Runtime>,
    mut rx: mpsc::Receiver<Alert>,
    email: super::email::Outbox,
) {
    while let Some(first) = rx.recv().await {
        // The running config decides: a reload may turn alerts on, off, or change them.
        let Some(cfg) = runtime.snapshot().config.alerts.clone() else {
            continue;
        };
        let mut batch: Vec<Alert> = Vec::new();
        if cfg.wants(first.kind) {
            batch.push(first);
        }
        let deadline = Instant::now() + cfg.batch;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) if cfg.wants(a.kind) => batch.push(a),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if cfg.email.is_some() {
                email.forward(&batch);
            }
            if let Some(webhook) = &cfg.webhook {
                deliver(&cfg, webhook, &batch, runtime.alerts.dropped()).await;
            }
        }
    }
}

/// The JSON document of one POST.
/// `dropped`: alerts the queue refused since start.
pub fn payload(batch: &[Alert], dropped: u64) -> Value {
    let node = hostname();
    let mut text = format!("autolb@{node}: {}", batch[0].summary);
    if batch.len() > 1 {
        for a in &batch[1..batch.len().min(10)] {
            text.push('\n');
            text.push_str(&a.summary);
        }
        if batch.len() > 10 {
            text.push_str(&format!("\n... and {} more", batch.len() - 10));
        }
    }
    json!({
        "source": "autolb",
        "version": env!("CARGO_PKG_VERSION"),
        "node": node,
        "pid": std::process::id(),
        "sent_at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "count": batch.len(),
        "dropped_total": dropped,
        "text": text,
        "alerts": batch.iter().map(|a| a.body.clone()).collect::<Vec<_>>(),
    })
}

/// POST `batch`, retrying up to `cfg.retries` times; gives up (logged) after that.
async fn deliver(cfg: &Alerts, webhook: &WebhookUrl, batch: &[Alert], dropped: u64) {
    let body = Bytes::from(payload(batch, dropped).to_string());
    let token = cfg
        .token_env
        .as_deref()
        .and_then(|v| std::env::var(v).ok())
        .filter(|t| !t.trim().is_empty());
    let url = webhook.redacted();
    let mut backoff = cfg.backoff;
    for attempt in 0..=cfg.retries {
        let result =
            match tokio::time::timeout(cfg.timeout, post(webhook, token.as_deref(), body.clone()))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(PostError::Timeout(cfg.timeout)),
            };
        let e = match result {
            Ok(()) => {
                tracing::info!(webhook = %url, alerts = batch.len(), attempt = attempt + 1, "alerts sent");
                return;
            }
            Err(e) => e,
        };
        if e.permanent() || attempt == cfg.retries {
            tracing::error!(webhook = %url, alerts = batch.len(), attempts = attempt + 1, error = %e, "alerts not delivered: dropped");
            return;
        }
        let wait = match &e {
            PostError::Status {
                retry_after: Some(r),
                ..
            } => (*r).max(backoff).min(MAX_BACKOFF),
            _ => backoff,
        };
        tracing::warn!(webhook = %url, attempt = attempt + 1, error = %e, retry_in = ?wait, "alert webhook failed");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// TLS for https webhooks: the system's CA bundle, ALPN http/1.1.
static TLS: LazyLock<Result<tokio_rustls::TlsConnector, String>> = LazyLock::new(|| {
    let tls = UpstreamTls {
        sni: None,
        ca: None,
        verify: true,
        client_cert: None,
        client_key: None,
    };
    crate::tls::client::client_config(&tls, UpstreamProtocol::H1)
        .map(tokio_rustls::TlsConnector::from)
        .map_err(|e| e.to_string())
});

/// One POST of `body`: resolve, connect, (TLS,) HTTP/1.1; Ok on a 2xx answer.
async fn post(w: &WebhookUrl, token: Option<&str>, body: Bytes) -> Result<(), PostError> {
    let addr = tokio::net::lookup_host((w.host.as_str(), w.port))
        .await
        .map_err(|source| PostError::Resolve {
            host: w.host.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| PostError::NoAddress(w.host.clone()))?;
    let tcp = TcpStream::connect(addr).await.map_err(PostError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if !w.https {
        return exchange(TokioIo::new(tcp), w, token, body).await;
    }
    let connector = TLS.as_ref().map_err(|e| PostError::Tls(e.clone()))?;
    let name = rustls_pki_types::ServerName::try_from(w.host.clone())
        .map_err(|e| PostError::Tls(format!("invalid server name {}: {e}", w.host)))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| PostError::Tls(e.to_string()))?;
    exchange(TokioIo::new(tls), w, token, body).await
}

async fn exchange<I>(
    io: I,
    w: &WebhookUrl,
    token: Option<&str>,
    body: Bytes,
) -> Result<(), PostError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = w.host_header();
    let mut req = Request::post(w.path.as_str())
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("autolb/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))?;
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok())
    {
        req.headers_mut().insert(AUTHORIZATION, t);
    }
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(PostError::Status {
        status,
        retry_after,
    })
}

/// This machine's name, for `node` and the text.
pub(super) fn hostname() -> String {
    static NAME: LazyLock<String> = LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    });
    NAME.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertKind;

    #[test]
    fn the_payload_lists_every_alert_and_a_text_summary() {
        let batch: Vec<Alert> = (0..12)
            .map(|i| {
                Alert::new(
                    AlertKind::BackendDown,
                    "warning",
                    format!("backend b{i} down"),
                    json!({ "backend": format!("b{i}") }),
                )
            })
            .collect();
        let p = payload(&batch, 0);
        assert_eq!(p["count"], 12);
        assert_eq!(p["alerts"].as_array().map(Vec::len), Some(12));
        assert_eq!(p["alerts"][3]["backend"], "b3");
        let text = p["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("autolb@") && text.contains("backend b0 down"));
        assert!(text.ends_with("... and 2 more"), "{text}");
    }

    #[test]
    fn only_some_client_errors_are_permanent() {
        let s = |status| PostError::Status {
            status,
            retry_after: None,
        };
        assert!(s(StatusCode::NOT_FOUND).permanent());
        assert!(!s(StatusCode::TOO_MANY_REQUESTS).permanent());
        assert!(!s(StatusCode::SERVICE_UNAVAILABLE).permanent());
        assert!(!PostError::Timeout(Duration::from_secs(1)).permanent());
    }
}
