//! The counters of TCP (`protocol: tcp`) proxying: per listener (bytes, refusals by reason)
//! and per backend (connections, bytes, errors). They live in the snapshot's types (a
//! listener's carried over reloads by its name, a backend's with the rest of its stats),
//! written by `l4` and rendered by it into `/metrics` and `/loadbalancer/status`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;

/// One tcp listener.
#[derive(Debug, Default)]
pub struct TcpListenerCounters {
    /// Bytes from clients (to backends).
    pub bytes_in: AtomicU64,
    /// Bytes to clients (from backends).
    pub bytes_out: AtomicU64,
    /// Connections closed before reaching a backend, by reason.
    pub rejected: RwLock<BTreeMap<&'static str, u64>>,
}

impl TcpListenerCounters {
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.write() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// The refusals so far, by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.read().map(|m| m.clone()).unwrap_or_default()
    }
}
