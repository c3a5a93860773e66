//! A backend's TCP (`protocol: tcp`) counters: connections, bytes, errors, written by `l4`.

use std::sync::atomic::AtomicU64;

/// One backend of a pool, as TCP connections use it.
#[derive(Debug, Default)]
pub struct TcpBackendCounters {
    pub open: AtomicU64,
    pub total: AtomicU64,
    /// Client -> backend.
    pub bytes_in: AtomicU64,
    /// Backend -> client.
    pub bytes_out: AtomicU64,
    /// Connect failures and connections the backend broke.
    pub errors: AtomicU64,
}
