//! Where alerts come from besides the two direct calls: the runtime's health events (backend
//! down, up, ejected, and a pool left without a usable backend), and the served
//! certificates' expiry dates, looked at shortly after start and then every hour.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::Alert;
use crate::config::{AlertKind, Protocol};
use crate::runtime::events::Event;
use crate::runtime::Runtime;

/// Turn health events into alerts until the event log goes away.
pub async fn health(runtime: Arc<Runtime>) {
    let mut rx = runtime.events.subscribe();
    // Pools a `pool_down` was sent for: `pool_up` follows only those (not a pool that is
    // merely starting, like an autoscaled one before its first instance is ready).
    let mut down: HashSet<String> = HashSet::new();
    loop {
        match rx.recv().await {
            Ok(event) => {
                let ready = runtime
                    .snapshot()
                    .pool(&event.pool)
                    .map(|p| p.ready_backends());
                for alert in on_event(&event, ready, &mut down) {
                    runtime.alerts.emit(alert);
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "alerts: health events came faster than they were read"
                )
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The alerts of one health event, given the pool's usable backends right after it.
pub fn on_event(e: &Event, ready: Option<usize>, down: &mut HashSet<String>) -> Vec<Alert> {
    let mut out = Vec::new();
    let fields = json!({ "pool": e.pool, "backend": e.backend, "detail": e.detail });
    let backend = |kind, severity, what: &str| {
        Alert::new(
            kind,
            severity,
            format!(
                "backend {} of pool {} is {what}: {}",
                e.backend, e.pool, e.detail
            ),
            fields.clone(),
        )
    };
    match e.kind {
        "down" => out.push(backend(AlertKind::BackendDown, "warning", "down")),
        "up" => out.push(backend(AlertKind::BackendUp, "info", "up")),
        "ejected" => out.push(backend(AlertKind::BackendEjected, "warning", "ejected")),
        _ => {}
    }
    match (e.kind, ready) {
        ("down" | "ejected", Some(0)) if down.insert(e.pool.clone()) => out.push(Alert::new(
            AlertKind::PoolDown,
            "critical",
            format!(
                "pool {} has no usable backend (last: {} {})",
                e.pool, e.backend, e.kind
            ),
            json!({ "pool": e.pool, "backend": e.backend, "ready": 0 }),
        )),
        ("up" | "ejection_lifted", Some(n)) if n > 0 && down.remove(&e.pool) => {
            out.push(Alert::new(
                AlertKind::PoolUp,
                "info",
                format!("pool {} has {n} usable backend(s) again", e.pool),
                json!({ "pool": e.pool, "backend": e.backend, "ready": n }),
            ))
        }
        _ => {}
    }
    out
}

/// How often the certificates are looked at (an alert repeats once a day per certificate).
const CERT_CHECK: Duration = Duration::from_secs(3600);
const DAY: i64 = 86_400;

/// Alert on served certificates within `alerts.certificate_days` of their expiry.
pub async fn certificates(runtime: Arc<Runtime>, tls: Arc<crate::tls::Store>) {
    // Listener and certificate -> the day (since the epoch) it was last alerted on.
    let mut sent: HashMap<(String, String), i64> = HashMap::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        let snapshot = runtime.snapshot();
        if let Some(cfg) = snapshot.config.alerts.as_ref() {
            let now = unix_now();
            for l in &snapshot.config.listeners {
                if l.protocol != Protocol::Https {
                    continue;
                }
                let Some(tls) = tls.listener(&l.name) else {
                    continue;
                };
                let served = tls
                    .stats
                    .expiry
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                for (cert, not_after) in served {
                    let Some(alert) = expiry(&l.name, &cert, not_after, now, cfg.certificate_days)
                    else {
                        continue;
                    };
                    let key = (l.name.clone(), cert);
                    if sent.get(&key) != Some(&(now / DAY)) {
                        sent.insert(key, now / DAY);
                        runtime.alerts.emit(alert);
                    }
                }
            }
        }
        drop(snapshot);
        tokio::time::sleep(CERT_CHECK).await;
    }
}

/// The alert for a certificate of `listener` expiring at `not_after` (Unix seconds), if it
/// is within `days` of `now` (or past it).
pub fn expiry(listener: &str, cert: &str, not_after: i64, now: i64, days: u32) -> Option<Alert> {
    let left = not_after - now;
    if left > i64::from(days) * DAY {
        return None;
    }
    let days_left = left.div_euclid(DAY);
    let when = std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    let date = humantime::format_rfc3339_seconds(when).to_string();
    let (severity, summary) = if left <= 0 {
        (
            "critical",
            format!("certificate {cert} of listener {listener} expired on {date}"),
        )
    } else {
        (
            if left < 3 * DAY { "critical" } else { "warning" },
            format!("certificate {cert} of listener {listener} expires in {days_left} day(s), on {date}"),
        )
    };
    Some(Alert::new(
        AlertKind::CertificateExpiry,
        severity,
        summary,
        json!({ "listener": listener, "certificate": cert, "not_after": date, "days_left": days_left }),
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str) -> Event {
        Event {
            at_ms: 1,
            pool: "web".into(),
            backend: "10.0.0.1:80".into(),
            kind,
            detail: "3 consecutive failed checks".into(),
        }
    }

    fn kinds(alerts: &[Alert]) -> Vec<AlertKind> {
        alerts.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn the_last_backend_down_takes_the_pool_down_and_the_first_up_brings_it_back() {
        let mut down = HashSet::new();
        let a = on_event(&event("down"), Some(1), &mut down);
        assert_eq!(kinds(&a), [AlertKind::BackendDown]);
        let a = on_event(&event("down"), Some(0), &mut down);
        assert_eq!(kinds(&a), [AlertKind::BackendDown, AlertKind::PoolDown]);
        assert_eq!(a[1].body["severity"], "critical");
        // Still down: no second pool_down.
        let a = on_event(&event("ejected"), Some(0), &mut down);
        assert_eq!(kinds(&a), [AlertKind::BackendEjected]);
        let a = on_event(&event("up"), Some(1), &mut down);
        assert_eq!(kinds(&a), [AlertKind::BackendUp, AlertKind::PoolUp]);
        // A pool that never went down does not come "back".
        let a = on_event(&event("up"), Some(2), &mut down);
        assert_eq!(kinds(&a), [AlertKind::BackendUp]);
        assert!(on_event(&event("ejection_lifted"), Some(2), &mut down).is_empty());
    }

    #[test]
    fn certificates_alert_within_the_window_only() {
        let now = 1_800_000_000;
        assert!(expiry("secure", "a.crt", now + 30 * DAY, now, 14).is_none());
        let a = expiry("secure", "a.crt", now + 10 * DAY + 5, now, 14).expect("alert");
        assert_eq!(a.body["days_left"], 10);
        assert_eq!(a.body["severity"], "warning");
        let a = expiry("secure", "a.crt", now + DAY, now, 14).expect("alert");
        assert_eq!(a.body["severity"], "critical");
        let a = expiry("secure", "a.crt", now - 5, now, 14).expect("alert");
        assert!(a.summary.contains("expired on"), "{}", a.summary);
    }
}
