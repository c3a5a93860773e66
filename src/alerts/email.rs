//! Email alerts (`alerts.email`): the alerts the webhook gets, by SMTP (lettre over tokio,
//! STARTTLS with rustls). At most one mail per event kind within `min_interval` (a minute
//! by default): the first alert of a kind goes out with its batch; what comes meanwhile
//! waits and goes in one mail when the interval is over. Each mail is sent by its own task
//! (a slow server delays no other kind), retried like the webhook (`retries`, `backoff`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::sender::hostname;
use super::{Alert, MAX_BATCH};
use crate::config::{AlertKind, Alerts, Email, StartTls};
use crate::runtime::Runtime;

/// Batches on their way to the email task (full: dropped, like the alert queue).
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Vec<Alert>>);

impl Outbox {
    pub fn new() -> (Outbox, mpsc::Receiver<Vec<Alert>>) {
        let (tx, rx) = mpsc::channel(64);
        (Outbox(tx), rx)
    }

    /// Hand a batch over; never waits.
    pub fn forward(&self, batch: &[Alert]) {
        if self.0.try_send(batch.to_vec()).is_err() {
            tracing::warn!(
                alerts = batch.len(),
                "email alerts dropped: the mailer is behind"
            );
        }
    }
}

/// Why a mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address: {0}")]
    Address(#[from] lettre::address::AddressError),
    #[error("cannot build the mail: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
}

/// Run until the outbox closes.
pub async fn run(runtime: Arc<Runtime>, mut rx: mpsc::Receiver<Vec<Alert>>) {
    let mut pending: BTreeMap<AlertKind, Vec<Alert>> = BTreeMap::new();
    let mut last_sent: HashMap<AlertKind, Instant> = HashMap::new();
    let mut dropped: u64 = 0;
    loop {
        let cfg = runtime.snapshot().config.alerts.clone();
        let interval = cfg
            .as_ref()
            .and_then(|c| c.email.as_ref())
            .map_or(Duration::from_secs(60), |e| e.min_interval);
        let due_at = |kind: &AlertKind| last_sent.get(kind).map(|t| *t + interval);
        let next = pending.keys().filter_map(due_at).min();
        let ready = pending
            .keys()
            .any(|k| due_at(k).is_none_or(|t| t <= Instant::now()));
        if !ready {
            let wait = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = rx.recv() => match got {
                    Some(batch) => {
                        for a in batch {
                            let list = pending.entry(a.kind).or_default();
                            if list.len() < MAX_BATCH {
                                list.push(a);
                            } else {
                                dropped += 1;
                            }
                        }
                    }
                    None => return,
                },
                _ = wait => {}
            }
            continue;
        }
        let now = Instant::now();
        let kinds: Vec<AlertKind> = pending
            .keys()
            .filter(|k| due_at(k).is_none_or(|t| t <= now))
            .copied()
            .collect();
        for kind in kinds {
            let Some(alerts) = pending.remove(&kind) else {
                continue;
            };
            let Some(cfg) = cfg.clone().filter(|c| c.email.is_some()) else {
                continue; // email turned off by a reload: nothing to send
            };
            last_sent.insert(kind, now);
            let more = std::mem::take(&mut dropped);
            tokio::spawn(async move { deliver(&cfg, kind, &alerts, more).await });
        }
    }
}

/// The subject and text of the mail for `alerts` (all of `kind`).
pub fn compose(kind: AlertKind, alerts: &[Alert], dropped: u64) -> (String, String) {
    let node = hostname();
    let first = alerts.first().map_or("", |a| a.summary.as_str());
    let subject = match alerts.len() {
        0 | 1 => format!("[autolb {node}] {}: {first}", kind.name()),
        n => format!("[autolb {node}] {}: {first} (+{} more)", kind.name(), n - 1),
    };
    let mut text = format!(
        "autolb {} on {node} (pid {}): {} {} alert(s).\n\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        alerts.len(),
        kind.name()
    );
    for a in alerts {
        let at = a.body["at"].as_str().unwrap_or("");
        let severity = a.body["severity"].as_str().unwrap_or("");
        text.push_str(&format!("{at} [{severity}] {}\n", a.summary));
    }
    if dropped > 0 {
        text.push_str(&format!(
            "\n{dropped} more alert(s) were dropped (too many at once).\n"
        ));
    }
    let json: Vec<&serde_json::Value> = alerts.iter().map(|a| &a.body).collect();
    text.push_str("\nAs JSON:\n");
    text.push_str(&serde_json::to_string_pretty(&json).unwrap_or_default());
    text.push('\n');
    (subject, text)
}

fn message(email: &Email, subject: String, text: String) -> Result<Message, MailError> {
    let mut builder = Message::builder()
        .from(email.from.parse::<Mailbox>()?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        builder = builder.to(to.parse::<Mailbox>()?);
    }
    Ok(builder.body(text)?)
}

fn transport(email: &Email) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let params = || TlsParameters::new(email.host.clone());
    let tls = match (email.starttls, email.port) {
        (StartTls::Never, _) => Tls::None,
        (_, 465) => Tls::Wrapper(params()?),
        (StartTls::Auto, _) => Tls::Opportunistic(params()?),
        (StartTls::Always, _) => Tls::Required(params()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.host.as_str())
        .port(email.port)
        .tls(tls)
        .timeout(Some(email.timeout))
        .hello_name(ClientId::Domain(hostname()));
    if let (Some(user), Some(pass)) = (&email.username_env, &email.password_env) {
        let get =
            |name: &String| std::env::var(name).map_err(|_| MailError::MissingEnv(name.clone()));
        builder = builder.credentials(Credentials::new(get(user)?, get(pass)?));
    }
    Ok(builder.build())
}

/// Send one mail to every recipient, retrying with backoff; gives up (logged) after
/// `alerts.retries` further attempts.
async fn deliver(cfg: &Alerts, kind: AlertKind, alerts: &[Alert], dropped: u64) {
    let Some(email) = &cfg.email else {
        return;
    };
    let server = format!("{}:{}", email.host, email.port);
    let (subject, text) = compose(kind, alerts, dropped);
    let mut backoff = cfg.backoff;
    for attempt in 0..=cfg.retries {
        let sent = match (
            message(email, subject.clone(), text.clone()),
            transport(email),
        ) {
            (Ok(m), Ok(t)) => t.send(m).await.map(|_| ()).map_err(MailError::from),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let e = match sent {
            Ok(()) => {
                tracing::info!(smtp = %server, event = kind.name(), alerts = alerts.len(), attempt = attempt + 1, "alert mail sent");
                return;
            }
            Err(e) => e,
        };
        let permanent = match &e {
            MailError::Smtp(s) => s.is_permanent(),
            _ => true,
        };
        if permanent || attempt == cfg.retries {
            tracing::error!(smtp = %server, event = kind.name(), alerts = alerts.len(), attempts = attempt + 1, error = %e, "alert mail not delivered: dropped");
            return;
        }
        tracing::warn!(smtp = %server, event = kind.name(), attempt = attempt + 1, error = %e, retry_in = ?backoff, "alert mail failed");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_mail_names_the_kind_in_its_subject_and_lists_every_alert() {
        let alerts: Vec<Alert> = (0..3)
            .map(|i| {
                Alert::new(
                    AlertKind::BackendDown,
                    "warning",
                    format!("backend b{i} of pool web is down"),
                    json!({ "backend": format!("b{i}") }),
                )
            })
            .collect();
        let (subject, text) = compose(AlertKind::BackendDown, &alerts, 2);
        assert!(subject.starts_with("[autolb "), "{subject}");
        assert!(
            subject.ends_with("] backend_down: backend b0 of pool web is down (+2 more)"),
            "{subject}"
        );
        for i in 0..3 {
            assert!(text.contains(&format!("[warning] backend b{i} of pool web is down")));
        }
        assert!(text.contains("2 more alert(s) were dropped"));
        assert!(text.contains("\"backend\": \"b2\""), "{text}");
    }
}
