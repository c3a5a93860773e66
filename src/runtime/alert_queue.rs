//! The alert queue a server's runtime owns: raising an alert is a `try_send` into it (never
//! waits; refused alerts are counted), and `alerts`' sender task, started with the server,
//! takes them out. Before the sender starts (and in unit tests), alerts are discarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::config::AlertKind;

/// Alerts waiting for the sender; more are dropped (and counted).
pub const QUEUE: usize = 1024;

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

#[derive(Debug, Default)]
pub struct AlertQueue {
    tx: OnceLock<mpsc::Sender<Alert>>,
    dropped: AtomicU64,
}

impl AlertQueue {
    /// The receiving end, once: `None` when the sender was already started.
    pub fn open(&self) -> Option<mpsc::Receiver<Alert>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.tx.set(tx).ok().map(|()| rx)
    }

    /// Queue `alert` for the sender, or drop it: never waits.
    pub fn emit(&self, alert: Alert) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        if let Err(e) = tx.try_send(alert) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
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

    /// Alerts dropped since start because the queue was full or the sender stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(i: usize) -> Alert {
        Alert::new(AlertKind::Scaling, "info", format!("alert {i}"), json!({}))
    }

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
        // Not started: discarded silently, not counted.
        let q = AlertQueue::default();
        q.emit(alert(0));
        assert_eq!(q.dropped(), 0);
        // Started with nobody reading: QUEUE alerts queue, the rest are dropped and counted,
        // and no call waits for room (this thread is the only one: a wait would hang).
        let mut rx = q.open().expect("the first open");
        assert!(q.open().is_none(), "one receiver per queue");
        for i in 0..QUEUE + 3 {
            q.emit(alert(i));
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(rx.try_recv().expect("queued").summary, "alert 0");
        // A stopped sender (receiver gone) refuses without waiting too.
        drop(rx);
        q.emit(alert(9));
        assert_eq!(q.dropped(), 4);
    }

    #[test]
    fn two_queues_are_independent() {
        let (a, b) = (AlertQueue::default(), AlertQueue::default());
        let mut rx = a.open().expect("open");
        assert!(b.open().is_some(), "each runtime has its own sender");
        b.emit(alert(1));
        assert!(rx.try_recv().is_err(), "b's alert never reaches a's sender");
    }
}
