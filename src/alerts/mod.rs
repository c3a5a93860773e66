//! Alerts (`alerts: {webhook, email, events, ...}`): backend down/up/ejected, pool without
//! a usable backend (and back), scaling, refused reloads and certificates near expiry, sent
//! as JSON POSTs to a webhook and/or by email (at most one mail per kind and minute).
//!
//! Raising an alert never blocks and never fails: it is a `try_send` into one bounded queue
//! (full: the alert is dropped and counted). One task batches what arrives within
//! `alerts.batch`, filters it by `alerts.events` of the running config, and POSTs it,
//! retrying with exponential backoff. Health events come from the runtime's event log
//! (a broadcast), scaling and reload failures from one call each in the autoscaler and the
//! reload path, certificate expiry from a daily look at the served certificates.

mod email;
mod sender;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::config::AlertKind;
use crate::runtime::Runtime;

/// Alerts waiting for the sender; more are dropped (and counted).
pub const QUEUE: usize = 1024;
/// The most alerts in one POST.
pub const MAX_BATCH: usize = 100;

static SENDER: OnceLock<mpsc::Sender<Alert>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One alert, as it goes into the POST's `alerts` list.
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: AlertKind,
    /// One line for humans (and Slack-style `text`).
    pub summary: String,
    /// `event`, `severity`, `at`, `at_ms`, `summary`, and the kind's own fields.
    pub body: Value,
}

impl Alert {
    /// An alert raised now; `fields` (a JSON object) adds the kind's own fields.
    pub fn new(kind: AlertKind, severity: &str, summary: String, fields: Value) -> Alert {
        let now = SystemTime::now();
        let at_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut body = Map::new();
        body.insert("event".into(), json!(kind.name()));
        body.insert("severity".into(), json!(severity));
        body.insert(
            "at".into(),
            json!(humantime::format_rfc3339_millis(now).to_string()),
        );
        body.insert("at_ms".into(), json!(at_ms));
        body.insert("summary".into(), json!(summary));
        if let Value::Object(extra) = fields {
            body.extend(extra);
        }
        Alert {
            kind,
            summary,
            body: Value::Object(body),
        }
    }
}

/// Start the sender and the watchers (once per process; inside the main tokio runtime).
/// What is sent follows the running config: without `alerts:`, alerts are discarded.
pub fn start(runtime: Arc<Runtime>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    if SENDER.set(tx).is_err() {
        return;
    }
    let (outbox, mail_rx) = email::Outbox::new();
    tokio::spawn(email::run(runtime.clone(), mail_rx));
    tokio::spawn(sender::run(runtime.clone(), rx, outbox));
    tokio::spawn(watch::health(runtime));
}

/// Alert on `tls`'s served certificates near their expiry (one watcher per server).
pub use watch::certificates as watch_certificates;

/// Queue `alert` for the sender, or drop it: never waits.
pub fn emit(alert: Alert) {
    if let Some(tx) = SENDER.get() {
        offer(tx, &DROPPED, alert);
    }
}

/// `try_send` into `tx`; a refused alert is counted in `dropped`.
fn offer(tx: &mpsc::Sender<Alert>, dropped: &AtomicU64, alert: Alert) {
    if let Err(e) = tx.try_send(alert) {
        let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Say so on the first drop and then every 100, not once per alert.
        if n == 1 || n.is_multiple_of(100) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "sender stopped",
            };
            tracing::warn!(dropped = n, why, "alert dropped");
        }
    }
}

/// Alerts dropped since start because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The autoscaler changed `pool` from `from` to `to` instances.
pub fn scaling(pool: &str, from: u32, to: u32, reason: &str) {
    let direction = if to > from { "up" } else { "down" };
    emit(Alert::new(
        AlertKind::Scaling,
        "info",
        format!("pool {pool} scaled {direction} from {from} to {to} instances: {reason}"),
        json!({ "pool": pool, "from": from, "to": to, "direction": direction, "reason": reason }),
    ));
}

/// A reload (by `trigger`) was refused with `errors`; the running config kept serving.
pub fn reload_failed(trigger: &str, errors: &[String]) {
    let first = errors.first().map_or("", String::as_str);
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    emit(Alert::new(
        AlertKind::ReloadFailed,
        "warning",
        format!(
            "config reload ({trigger}) refused, the running config keeps serving: {first}{more}"
        ),
        json!({ "trigger": trigger, "errors": errors }),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_carries_its_kind_time_and_fields() {
        let a = Alert::new(
            AlertKind::PoolDown,
            "critical",
            "pool web has no usable backend".into(),
            json!({ "pool": "web" }),
        );
        assert_eq!(a.body["event"], "pool_down");
        assert_eq!(a.body["severity"], "critical");
        assert_eq!(a.body["pool"], "web");
        assert!(a.body["at_ms"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000));
        assert!(a.body["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn emitting_before_start_or_with_a_full_queue_never_blocks() {
        // Not started in unit tests (nothing calls `start`): dropped silently, not counted.
        assert!(SENDER.get().is_none());
        reload_failed("admin", &["x".into()]);
        scaling("web", 1, 2, "test");
        assert_eq!(dropped(), 0);
        // A queue of 2 nobody reads: two alerts queue, the rest are dropped and counted,
        // and no call waits for room (this thread is the only one: a wait would hang).
        let (tx, mut rx) = mpsc::channel(2);
        let count = AtomicU64::new(0);
        for i in 0..5 {
            offer(
                &tx,
                &count,
                Alert::new(AlertKind::Scaling, "info", format!("alert {i}"), json!({})),
            );
        }
        assert_eq!(count.load(Ordering::Relaxed), 3);
        let first = rx.try_recv().expect("the first alert was queued");
        assert_eq!(first.summary, "alert 0");
        assert_eq!(rx.try_recv().expect("and the second").summary, "alert 1");
        assert!(rx.try_recv().is_err(), "the others were dropped");
        // A stopped sender (receiver gone) refuses without waiting too.
        drop(rx);
        offer(
            &tx,
            &count,
            Alert::new(AlertKind::Scaling, "info", "late".into(), json!({})),
        );
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
