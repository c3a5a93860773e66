//! `target.prometheus` and `target.redis_list`: a task per autoscaled pool reads each
//! configured source every `interval` and keeps the last reading (value, when, the error)
//! for the policy and `/scaling/status`. A source that fails has no value: the policy then
//! holds the size (never scales in on missing data) and the status says it is degraded.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::controller::PoolScaler;
use super::policy::Signals;
use crate::state::{bounded, SharedState};

/// The last reading of one source.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The value of the last successful read, while no read failed since.
    pub value: Option<f64>,
    /// When the value was read.
    pub at: Option<Instant>,
    /// Why the last read failed.
    pub error: Option<String>,
    pub failures: u64,
}

impl Reading {
    fn record(&mut self, result: Result<f64, String>, now: Instant) {
        match result {
            Ok(v) => {
                self.value = Some(v);
                self.at = Some(now);
                self.error = None;
            }
            Err(e) => {
                self.value = None;
                self.error = Some(e);
                self.failures += 1;
            }
        }
    }

    fn to_json(&self, per_instance: f64, now: Instant) -> Value {
        json!({
            "value": self.value,
            "per_instance": per_instance,
            "age_seconds": self.at.map(|at| now.saturating_duration_since(at).as_secs()),
            "error": self.error,
            "failures_total": self.failures,
            "degraded": self.value.is_none(),
        })
    }
}

/// The readings of a pool's external sources (`None`: not configured).
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub prometheus: Option<Reading>,
    pub redis_list: Option<Reading>,
}

impl Readings {
    /// Put the sources' values into the signals the policy decides from.
    pub fn apply(&self, s: &mut Signals) {
        s.prometheus = self.prometheus.as_ref().and_then(|r| r.value);
        s.redis_list = self.redis_list.as_ref().and_then(|r| r.value);
    }

    /// `/scaling/status`: each configured source, its value, age and error.
    pub fn to_json(&self, cfg: &crate::config::Autoscale, now: Instant) -> Value {
        let ext = &cfg.external;
        json!({
            "prometheus": ext.prometheus.as_ref().map(|p| {
                let r = self.prometheus.clone().unwrap_or_default();
                let mut v = r.to_json(p.per_instance, now);
                v["query"] = json!(p.query);
                v
            }),
            "redis_list": ext.redis_list.as_ref().map(|l| {
                let r = self.redis_list.clone().unwrap_or_default();
                let mut v = r.to_json(l.per_instance, now);
                v["key"] = json!(l.key);
                v
            }),
        })
    }
}

/// Read the pool's sources every `interval` until the pool stops being autoscaled; a
/// reload's new settings apply at the next read. `state` is the shared-state backend
/// (`redis_list` reads its Redis).
pub async fn watch(scaler: Arc<PoolScaler>, state: Option<Arc<dyn SharedState>>) {
    loop {
        let cfg = {
            let st = scaler.lock();
            if st.stopped {
                return;
            }
            st.cfg.clone()
        };
        let ext = &cfg.external;
        let prometheus = match &ext.prometheus {
            Some(p) => Some(super::prometheus::query(p).await),
            None => None,
        };
        let redis_list = match (&ext.redis_list, &state) {
            (Some(l), Some(s)) => Some(
                bounded(s.list_len(&l.key))
                    .await
                    .map(|n| n as f64)
                    .map_err(|e| format!("LLEN {}: {e}", l.key)),
            ),
            (Some(_), None) => Some(Err("needs state.backend: redis".to_string())),
            (None, _) => None,
        };
        let now = Instant::now();
        {
            let mut st = scaler.lock();
            let r = &mut st.external;
            merge(
                &mut r.prometheus,
                prometheus,
                now,
                &scaler.pool,
                "prometheus",
            );
            merge(
                &mut r.redis_list,
                redis_list,
                now,
                &scaler.pool,
                "redis_list",
            );
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

fn merge(
    slot: &mut Option<Reading>,
    result: Option<Result<f64, String>>,
    now: Instant,
    pool: &str,
    what: &str,
) {
    let Some(result) = result else {
        *slot = None;
        return;
    };
    let reading = slot.get_or_insert_with(Reading::default);
    match (&result, &reading.error) {
        (Err(e), None) => {
            tracing::warn!(pool, source = what, error = %e, "autoscale signal unavailable: the size holds")
        }
        (Ok(_), Some(_)) => tracing::info!(pool, source = what, "autoscale signal back"),
        _ => {}
    }
    reading.record(result, now);
}
