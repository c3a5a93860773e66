//! The `redis` backend: standalone Redis, Redis Cluster (detected at connect time from
//! `INFO cluster`) or a master managed by Sentinel, through the async `redis` crate on tokio,
//! over TLS and with ACL credentials when configured.
//!
//! A supervisor task (`supervise`) connects, probes once a second (round trip, topology,
//! failovers) and reconnects through every node it knows and every seed after a failure;
//! with Sentinel it re-resolves the master, and a `+switch-master` subscription (`sentinel`)
//! wakes it at once. Every call is bounded by `CALL_TIMEOUT`; while the backend is not
//! answering, calls fail at once, so callers fall back to node-local behaviour.

mod link;
mod ops;
mod pubsub;
mod sentinel;
mod supervise;
mod topology;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::{aio::MultiplexedConnection, cluster_async::ClusterConnection, Cmd, FromRedisValue};
use serde_json::json;
use tokio::sync::Notify;

use super::{bounded, BackendStatus, StateError};
use crate::config::{redact, Redis, Sentinel};
pub use link::StartError;
use link::{Access, Addr};
use topology::Topology;

/// One connection, cloned per call (both kinds multiplex).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, StateError> {
        let r = match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        };
        r.map_err(|e| StateError::Backend(e.to_string()))
    }
}

/// What autolb talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone = 0,
    Cluster = 1,
    Sentinel = 2,
}

impl Mode {
    fn kind(self) -> &'static str {
        match self {
            Mode::Standalone => "redis",
            Mode::Cluster => "redis-cluster",
            Mode::Sentinel => "redis-sentinel",
        }
    }
}

struct LastError {
    message: String,
    at: Instant,
}

/// A failover autolb followed.
struct Failover {
    from: String,
    to: String,
    how: &'static str,
    at_ms: u64,
    at: Instant,
}

/// What autolb knows of one Sentinel.
#[derive(Debug, Clone, Default)]
struct SentinelSeen {
    addr: String,
    /// Whether it answered the last master lookup sent to it.
    answered: Option<bool>,
    /// Whether the `+switch-master` subscription on it is up.
    subscribed: bool,
}

/// Shared state on Redis.
pub struct RedisState {
    access: Access,
    sentinel: Option<Sentinel>,
    /// The first seed URL, redacted (for status).
    url: Option<String>,
    conn: Mutex<Option<Conn>>,
    mode: AtomicU8,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    rtt_us: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    failovers: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    topology: Mutex<Topology>,
    /// The node the data connection goes to (outside a cluster).
    talking_to: Mutex<Option<Addr>>,
    last_failover: Mutex<Option<Failover>>,
    sentinels: Mutex<Vec<SentinelSeen>>,
    /// A `+switch-master` arrived since the master was last resolved.
    switch_seen: AtomicBool,
    /// Wakes the supervisor (a lost connection, a `+switch-master`).
    wake: Arc<Notify>,
    /// Channels with a live subscription (`pubsub`).
    listening: Mutex<Vec<String>>,
    /// This backend, for the tasks it starts later (subscriptions).
    me: std::sync::Weak<RedisState>,
}

impl RedisState {
    /// Creates the backend and starts its supervisor (both end when the backend is dropped).
    pub fn start(settings: &Redis) -> Result<Arc<RedisState>, StartError> {
        let access = Access::new(settings)?;
        let sentinels = settings.sentinel.as_ref().map_or_else(Vec::new, |s| {
            s.sentinels
                .iter()
                .map(|a| SentinelSeen {
                    addr: a.clone(),
                    ..SentinelSeen::default()
                })
                .collect()
        });
        let mode = if settings.sentinel.is_some() {
            Mode::Sentinel
        } else {
            Mode::Standalone
        };
        let state = Arc::new_cyclic(|me| RedisState {
            access,
            sentinel: settings.sentinel.clone(),
            url: settings.urls.first().map(|u| redact(u)),
            conn: Mutex::new(None),
            mode: AtomicU8::new(mode as u8),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            last_error: Mutex::new(None),
            topology: Mutex::new(Topology::default()),
            talking_to: Mutex::new(None),
            last_failover: Mutex::new(None),
            sentinels: Mutex::new(sentinels),
            switch_seen: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            listening: Mutex::new(Vec::new()),
            me: me.clone(),
        });
        tokio::spawn(supervise::run(Arc::downgrade(&state), state.wake.clone()));
        if let Some(s) = &settings.sentinel {
            for addr in &s.sentinels {
                tokio::spawn(sentinel::listen(Arc::downgrade(&state), addr.clone()));
            }
        }
        Ok(state)
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Cluster,
            2 => Mode::Sentinel,
            _ => Mode::Standalone,
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn conn(&self) -> Option<Conn> {
        self.conn.lock().ok().and_then(|c| c.clone())
    }

    fn set_conn(&self, conn: Option<Conn>) {
        if let Ok(mut c) = self.conn.lock() {
            *c = conn;
        }
    }

    fn topology(&self) -> Topology {
        self.topology.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The backend answers again (after a successful probe).
    fn up(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            if self.ever_connected.swap(true, Ordering::Relaxed) {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(kind = self.mode().kind(), talking_to = ?self.talking_to.lock().ok().and_then(|t| t.clone()).map(|a| a.to_string()), "redis: connected; shared features are shared again");
        }
    }

    /// Record an error (counted, shown as `last_error`).
    fn note_error(&self, e: &StateError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(LastError {
                message: e.to_string(),
                at: Instant::now(),
            });
        }
    }

    /// The backend stops answering: node-local until the supervisor has it back. A single
    /// connection is dropped (the supervisor reconnects, re-resolving through Sentinel); a
    /// cluster connection is kept (it follows MOVED and reconnects nodes on its own).
    fn down(&self, e: &StateError) {
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis: lost; shared features run node-local until it answers");
        }
        if self.mode() != Mode::Cluster {
            self.set_conn(None);
        }
    }

    /// A call failed: node-local, and the supervisor looks at once.
    fn fail(&self, e: &StateError) {
        self.note_error(e);
        self.down(e);
        self.wake.notify_one();
    }

    /// Record a failover followed.
    fn followed(&self, from: String, to: String, how: &'static str) {
        tracing::warn!(%from, %to, how, "redis: followed a failover");
        self.failovers.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.last_failover.lock() {
            *f = Some(Failover {
                from,
                to,
                how,
                at_ms: super::now_ms(),
                at: Instant::now(),
            });
        }
    }

    /// One bounded command; a failure makes the backend node-local (the supervisor recovers).
    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StateError> {
        if !self.is_connected() {
            return Err(StateError::Disconnected);
        }
        let Some(mut conn) = self.conn() else {
            return Err(StateError::Disconnected);
        };
        let r = bounded(async move { conn.query(&cmd).await }).await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn backend_status(&self) -> BackendStatus {
        let connected = self.is_connected();
        let (last_error, last_error_age) = self
            .last_error
            .lock()
            .ok()
            .and_then(|l| {
                l.as_ref()
                    .map(|e| (Some(e.message.clone()), Some(e.at.elapsed().as_secs())))
            })
            .unwrap_or((None, None));
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        let topo = self.topology();
        let mut topology = topo.json();
        let mode = self.mode();
        topology["talking_to"] = match mode {
            Mode::Cluster => json!(topo
                .nodes
                .iter()
                .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                .map(|n| n.addr.clone())
                .collect::<Vec<_>>()),
            _ => json!(self
                .talking_to
                .lock()
                .ok()
                .and_then(|t| t.clone())
                .map(|a| vec![a.to_string()])
                .unwrap_or_default()),
        };
        topology["seeds"] = json!(self
            .access
            .seeds
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>());
        if let Some(s) = &self.sentinel {
            topology["master_name"] = json!(s.master_name);
            let seen = self.sentinels.lock().map(|s| s.clone()).unwrap_or_default();
            topology["sentinels"] = json!(seen
                .iter()
                .map(|s| json!({
                    "address": s.addr,
                    "answered": s.answered,
                    "subscribed": s.subscribed,
                }))
                .collect::<Vec<_>>());
        }
        let last_failover = self.last_failover.lock().ok().and_then(|f| {
            f.as_ref().map(|f| {
                json!({
                    "from": f.from,
                    "to": f.to,
                    "how": f.how,
                    "at_ms": f.at_ms,
                    "seconds_ago": f.at.elapsed().as_secs(),
                })
            })
        });
        BackendStatus {
            kind: mode.kind(),
            connected,
            url: self.url.clone(),
            round_trip: (connected && rtt > 0).then(|| Duration::from_micros(rtt)),
            nodes: topo.nodes_json(),
            last_error,
            last_error_age,
            errors_total: self.errors.load(Ordering::Relaxed),
            reconnects_total: self.reconnects.load(Ordering::Relaxed),
            topology,
            last_failover,
            failovers_total: self.failovers.load(Ordering::Relaxed),
            subscribed: self.listening(),
        }
    }
}
