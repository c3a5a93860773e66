//! Connection admission: `limits.max_connections` per listener (over every worker) and
//! `limits.max_connections_per_ip`. A connection past either is closed at once, before a
//! byte is read; an `Admitted` guard gives its place back when the connection ends. The
//! counts of a listener belong to its entry in the server's `Listeners` (kept when a
//! reload restarts the listener under the same name).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::runtime::Runtime;

const SHARDS: usize = 32;

/// Open connections of one listener.
#[derive(Debug)]
pub(crate) struct Counts {
    total: AtomicUsize,
    per_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn shard(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n as u64) ^ ((n >> 64) as u64)
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

/// A place taken by one open connection.
#[derive(Debug)]
pub(crate) struct Admitted {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = lock(&self.counts.per_ip[shard(ip)]);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Admit a connection from `ip` on listener `name` (its open connections: `counts`), or
/// `None` (close it) past its limits.
pub(crate) fn admit(
    name: &str,
    ip: IpAddr,
    runtime: &Runtime,
    counts: &Arc<Counts>,
) -> Option<Admitted> {
    let snapshot = runtime.snapshot();
    let limits = snapshot
        .config
        .listeners
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.limits.clone())
        .unwrap_or_default();
    drop(snapshot);
    let counts = counts.clone();
    let before = counts.total.fetch_add(1, Ordering::AcqRel);
    let mut admitted = Admitted { counts, ip: None };
    if before >= limits.max_connections {
        tracing::debug!(listener = name, client = %ip, "max_connections reached: closed");
        return None;
    }
    if limits.max_connections_per_ip > 0 {
        let mut map = lock(&admitted.counts.per_ip[shard(ip)]);
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            tracing::debug!(listener = name, client = %ip, "max_connections_per_ip reached: closed");
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        drop(map);
        admitted.ip = Some(ip);
    }
    Some(admitted)
}
