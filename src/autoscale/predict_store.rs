//! Keeps a pool's learnt demand shape (`predict::Predictor`) in the shared state, so that
//! a restart, and with `shared: true` a new leader, start from what was learnt: loaded once
//! when the pool starts to be autoscaled, stored 5 s later and then every minute (kept 8
//! days).

use std::sync::Arc;
use std::time::Duration;

use super::controller::PoolScaler;
use super::predict::Predictor;
use crate::state::{bounded, SharedState};

const EVERY: Duration = Duration::from_secs(60);
const KEEP: Duration = Duration::from_secs(8 * 86_400);

/// The key of a pool's shape (the backend prefixes it with `autolb:kv:`): one per pool for `shared: true` (the fleet's demand), else
/// one per pool and host (each node sizes its own instances from its own traffic).
pub fn key(pool: &str, shared: bool) -> String {
    if shared {
        format!("predict:{pool}")
    } else {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let node = std::env::var("AUTOLB_NODE_ID")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(host);
        format!("predict:{pool}:{node}")
    }
}

/// Load, then store every minute while the pool is autoscaled with `predictive`.
pub async fn keep(scaler: Arc<PoolScaler>, backend: Arc<dyn SharedState>) {
    let mut stores = 0u64;
    let (key, mut loaded) = {
        let st = scaler.lock();
        (key(&scaler.pool, st.cfg.shared), false)
    };
    loop {
        let (stopped, on) = {
            let st = scaler.lock();
            (st.stopped, st.cfg.predictive.is_some())
        };
        if stopped {
            return;
        }
        if on && !loaded {
            match bounded(backend.get_kv(&key)).await {
                Ok(found) => {
                    loaded = true;
                    let kept = found.and_then(|t| serde_json::from_str::<Predictor>(&t).ok());
                    let mut st = scaler.lock();
                    if let Some(p) = kept.filter(|p| {
                        p.first()
                            .is_some_and(|f| st.predictor.first().is_none_or(|g| f < g))
                    }) {
                        tracing::info!(pool = %scaler.pool, key, "prediction: history loaded from the shared state");
                        st.predictor = p;
                    }
                }
                Err(e) => {
                    tracing::debug!(pool = %scaler.pool, error = %e, "prediction: history not loaded yet")
                }
            }
        } else if on {
            let text = serde_json::to_string(&scaler.lock().predictor);
            if let Ok(text) = text {
                match bounded(backend.put_kv(&key, text, KEEP)).await {
                    Ok(()) => stores += 1,
                    Err(e) => {
                        tracing::debug!(pool = %scaler.pool, error = %e, "prediction: history not stored")
                    }
                }
            }
        }
        // Soon after loading (a short-lived process keeps what it learnt), then every minute.
        let pause = if !on || (loaded && stores > 0) {
            EVERY
        } else {
            Duration::from_secs(5)
        };
        tokio::time::sleep(pause).await;
    }
}
