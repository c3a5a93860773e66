//! Alerts (`alerts: {webhook, email, events, ...}`): backend down/up/ejected, pool without
//! a usable backend (and back), scaling, refused reloads and certificates near expiry, sent
//! as JSON POSTs to a webhook and/or by email (at most one mail per kind and minute).
//!
//! Raising an alert never blocks and never fails: it is a `try_send` into the runtime's
//! bounded queue (`runtime::alert_queue`; full: the alert is dropped and counted). One task batches what arrives within
//! `alerts.batch`, filters it by `alerts.events` of the running config, and POSTs it,
//! retrying with exponential backoff. Health events come from the runtime's event log
//! (a broadcast), scaling and reload failures from one call each in the autoscaler and the
//! reload path, certificate expiry from a daily look at the served certificates.

mod email;
mod sender;
mod watch;

use std::sync::Arc;

use serde_json::json;

use crate::config::AlertKind;
use crate::runtime::Runtime;

/// The most alerts in one POST.
pub const MAX_BATCH: usize = 100;

pub use crate::runtime::alert_queue::{Alert, AlertQueue};

/// Start the sender and the watchers (once per server, inside the main tokio runtime).
/// What is sent follows the running config: without `alerts:`, alerts are discarded.
pub fn start(runtime: Arc<Runtime>) {
    let Some(rx) = runtime.alerts.open() else {
        return;
    };
    let (outbox, mail_rx) = email::Outbox::new();
    tokio::spawn(email::run(runtime.clone(), mail_rx));
    tokio::spawn(sender::run(runtime.clone(), rx, outbox));
    tokio::spawn(watch::health(runtime));
}

/// Alert on `tls`'s served certificates near their expiry (one watcher per server).
pub use watch::certificates as watch_certificates;

/// The autoscaler changed `pool` from `from` to `to` instances.
pub fn scaling(alerts: &AlertQueue, pool: &str, from: u32, to: u32, reason: &str) {
    let direction = if to > from { "up" } else { "down" };
    alerts.emit(Alert::new(
        AlertKind::Scaling,
        "info",
        format!("pool {pool} scaled {direction} from {from} to {to} instances: {reason}"),
        json!({ "pool": pool, "from": from, "to": to, "direction": direction, "reason": reason }),
    ));
}

/// A reload (by `trigger`) was refused with `errors`; the running config kept serving.
pub fn reload_failed(alerts: &AlertQueue, trigger: &str, errors: &[String]) {
    let first = errors.first().map_or("", String::as_str);
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    alerts.emit(Alert::new(
        AlertKind::ReloadFailed,
        "warning",
        format!(
            "config reload ({trigger}) refused, the running config keeps serving: {first}{more}"
        ),
        json!({ "trigger": trigger, "errors": errors }),
    ));
}
