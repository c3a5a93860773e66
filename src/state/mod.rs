//! Shared state across autolb nodes: the `SharedState` trait with a node-local `memory`
//! backend (the default) and a `redis` one (standalone or Redis Cluster), the fleet registry
//! (`fleet`) and cluster-wide rate limits (`ratelimit`).
//!
//! Nothing on the request path ever waits for Redis: every call is bounded by a short
//! timeout and runs on background tasks; a failure degrades the feature to node-local
//! behaviour until the backend answers again.

pub mod fleet;
pub mod learned;
pub mod memory;
pub mod purge;
pub mod ratelimit;
pub mod redis;
pub mod seal;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{Config, State};
use crate::runtime::Runtime;

/// What a shared-state call may fail with; callers fall back to node-local behaviour.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("not connected")]
    Disconnected,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Backend(String),
}

/// A boxed future of a shared-state call.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// The backend's health, as `/redis/status` shows it.
#[derive(Debug, Clone, Default)]
pub struct BackendStatus {
    /// `memory`, `redis`, `redis-cluster` or `redis-sentinel`.
    pub kind: &'static str,
    pub connected: bool,
    /// The address as configured, without a password.
    pub url: Option<String>,
    /// Of the last PING.
    pub round_trip: Option<Duration>,
    /// Cluster nodes (or the one standalone server) as JSON objects.
    pub nodes: Vec<Value>,
    pub last_error: Option<String>,
    /// Seconds since the last error.
    pub last_error_age: Option<u64>,
    pub errors_total: u64,
    pub reconnects_total: u64,
    /// What autolb uses now: masters and replicas, the nodes it talks to, seeds, Sentinels.
    pub topology: Value,
    /// The last failover followed: `{from, to, how, at_ms, seconds_ago}`.
    pub last_failover: Option<Value>,
    pub failovers_total: u64,
    /// Channels with a live subscription (`subscribe`).
    pub subscribed: Vec<String>,
}

/// The primitives every shared feature is built from. A single node needs no Redis:
/// `memory` implements them in process.
pub trait SharedState: Send + Sync {
    /// `memory`, `redis`, `redis-cluster` or `redis-sentinel`.
    fn kind(&self) -> &'static str;
    /// Cheap: is the backend answering right now?
    fn connected(&self) -> bool;
    /// Store `value` as member `id` of `group`; it disappears unless renewed within `ttl`.
    fn put_member(
        &self,
        group: &str,
        id: &str,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, ()>;
    /// The live members of `group`, as `(id, value)`.
    fn members(&self, group: &str) -> StateFuture<'_, Vec<(String, String)>>;
    /// Remove member `id` of `group` now.
    fn remove_member(&self, group: &str, id: &str) -> StateFuture<'_, ()>;
    /// Atomically take up to `want` units from the counter `key` that allows `limit` in
    /// total (the key expires after `ttl`); returns how many were granted (0 when spent).
    fn take(&self, key: &str, want: u64, limit: u64, ttl: Duration) -> StateFuture<'_, u64>;
    /// The lease `name` (SET NX PX): take it for `holder` when free (a new fencing token
    /// from a counter that only grows, INCR), renew it when `holder` has it; answers the
    /// holder and its token either way.
    fn lease(&self, name: &str, holder: &str, ttl: Duration) -> StateFuture<'_, Lease>;
    /// Store `value` under lease `name` only if `token` is still its newest fencing token;
    /// false when refused (a newer leader exists).
    fn put_fenced(
        &self,
        name: &str,
        token: u64,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, bool>;
    /// The value last stored under lease `name` by `put_fenced`.
    fn get_fenced(&self, name: &str) -> StateFuture<'_, Option<String>>;
    /// Store `value` under `key`; it disappears unless stored again within `ttl`.
    fn put_kv(&self, key: &str, value: String, ttl: Duration) -> StateFuture<'_, ()>;
    /// The live value under `key` (`put_kv`).
    fn get_kv(&self, key: &str) -> StateFuture<'_, Option<String>>;
    /// Send `message` to every node subscribed to `channel` now (Redis `PUBLISH`; at most
    /// once, and only to whoever listens at that moment). `memory`: nobody else to tell.
    fn publish(&self, channel: &str, message: String) -> StateFuture<'_, ()>;
    /// Deliver every message published on `channel` to `to` for as long as the backend lives
    /// and `to` has a receiver, subscribing again after a lost connection or a failover.
    /// `memory`: nothing is ever published by another node.
    fn subscribe(&self, channel: &str, to: tokio::sync::mpsc::UnboundedSender<String>);
    /// The length of the user's list `key` (not one of autolb's keys: a worker queue an
    /// autoscaler reads, `target.redis_list`); 0 when it does not exist.
    fn list_len(&self, key: &str) -> StateFuture<'_, u64>;
    /// Health and connection facts.
    fn status(&self) -> BackendStatus;
}

/// Who holds a lease, with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub token: u64,
}

/// Every shared-state feature of one autolb.
pub struct Shared {
    pub backend: Arc<dyn SharedState>,
    pub fleet: Arc<fleet::Fleet>,
    pub limits: Arc<ratelimit::Limiters>,
    /// Learned sticky sessions (`sticky.learn_cookie`).
    pub learned: Arc<learned::Learned>,
    /// Cache purges across the fleet.
    pub purges: Arc<purge::Purges>,
}

/// Short bound on every backend call.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Starts the configured backend (must run in a tokio runtime); it is chosen at start and
/// changing `state:` needs a restart. Fails when the Redis password variable is unset or a
/// TLS file cannot be read.
pub fn backend(config: &Config) -> Result<Arc<dyn SharedState>, redis::StartError> {
    Ok(match &config.state {
        State::Memory => Arc::new(memory::MemoryState::default()),
        State::Redis(settings) => redis::RedisState::start(settings)?,
    })
}

/// Starts the fleet heartbeat, the rate limiters and learned stickiness on `backend`.
pub fn start(
    runtime: &Arc<Runtime>,
    admin: SocketAddr,
    backend: Arc<dyn SharedState>,
) -> Arc<Shared> {
    let fleet = fleet::Fleet::start(runtime, backend.clone(), admin);
    let limits = ratelimit::Limiters::start(backend.clone(), fleet.clone());
    let learned = learned::Learned::start(backend.clone());
    let purges = purge::Purges::start(runtime, backend.clone(), fleet.id());
    Arc::new(Shared {
        backend,
        fleet,
        limits,
        learned,
        purges,
    })
}

impl Shared {
    /// `GET /redis/status`.
    pub fn redis_status(&self) -> Value {
        let s = self.backend.status();
        let memory = s.kind == "memory";
        json!({
            "kind": s.kind,
            "connected": if memory { Value::Null } else { Value::Bool(s.connected) },
            "url": s.url,
            "round_trip_ms": s.round_trip.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            "nodes": s.nodes,
            "last_error": s.last_error,
            "last_error_seconds_ago": s.last_error_age,
            "errors_total": s.errors_total,
            "reconnects_total": s.reconnects_total,
            "mode": mode(&s),
            "node_id": self.fleet.id(),
            "topology": s.topology,
            "last_failover": s.last_failover,
            "failovers_total": s.failovers_total,
            "subscribed": s.subscribed,
        })
    }

    /// The `shared_state` part of `/health`.
    pub fn health(&self) -> Value {
        let s = self.backend.status();
        let memory = s.kind == "memory";
        json!({
            "backend": s.kind,
            "connected": if memory { Value::Null } else { Value::Bool(s.connected) },
            "degraded": !s.connected,
            "mode": mode(&s),
            "fleet_nodes": self.fleet.node_count(),
            "last_error": s.last_error,
        })
    }

    /// Adds the other nodes and config drift to a `/cluster/status` answer.
    pub fn fill_cluster_status(&self, status: &mut Value) {
        let (nodes, drift) = self.fleet.others_json();
        status["nodes"] = Value::Array(nodes);
        status["fleet"] = json!({
            "node_id": self.fleet.id(),
            "config_hash": self.fleet.config_hash(),
            "pools_hash": self.fleet.pools_hash(),
            "config_drift": drift,
            "nodes_total": self.fleet.node_count(),
            "shared_state": self.backend.kind(),
            "connected": self.backend.connected(),
        });
    }

    /// Prometheus lines of the shared state, the fleet and the rate limits.
    pub fn metrics(&self) -> String {
        let s = self.backend.status();
        let mut out = String::new();
        out.push_str("# HELP autolb_shared_state_up Whether the shared-state backend answers (1) or autolb runs node-local (0).\n# TYPE autolb_shared_state_up gauge\n");
        out.push_str(&format!(
            "autolb_shared_state_up{{backend=\"{}\"}} {}\n",
            s.kind,
            u8::from(s.connected)
        ));
        out.push_str("# HELP autolb_shared_state_round_trip_seconds Round trip of the last PING to the shared state.\n# TYPE autolb_shared_state_round_trip_seconds gauge\n");
        out.push_str(&format!(
            "autolb_shared_state_round_trip_seconds {}\n",
            s.round_trip.map_or(0.0, |d| d.as_secs_f64())
        ));
        out.push_str("# HELP autolb_shared_state_errors_total Failed or timed-out shared-state calls.\n# TYPE autolb_shared_state_errors_total counter\n");
        out.push_str(&format!(
            "autolb_shared_state_errors_total {}\n",
            s.errors_total
        ));
        out.push_str("# HELP autolb_shared_state_failovers_total Redis failovers followed (a promoted cluster replica, a new master from Sentinel or the seeds).\n# TYPE autolb_shared_state_failovers_total counter\n");
        out.push_str(&format!(
            "autolb_shared_state_failovers_total {}\n",
            s.failovers_total
        ));
        out.push_str("# HELP autolb_fleet_nodes autolb nodes seen in the fleet registry (this one included).\n# TYPE autolb_fleet_nodes gauge\n");
        out.push_str(&format!("autolb_fleet_nodes {}\n", self.fleet.node_count()));
        out.push_str(&self.limits.metrics());
        out
    }
}

/// Hash of what the nodes of a fleet must agree on: routes and pools (listener and admin
/// addresses, and the Redis seed address, may differ per node). Not the config hash
/// (`Config::hash`, of the whole file): `config_drift` compares this one.
pub fn pools_hash(config: &Config) -> String {
    let text = format!("{:?}{:?}", config.routes, config.pools);
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// `memory` (one node, nothing shared), `shared` (Redis answers) or `node-local` (Redis
/// configured but not answering: each node decides alone until it does).
fn mode(s: &BackendStatus) -> &'static str {
    if s.kind == "memory" {
        "memory"
    } else if s.connected {
        "shared"
    } else {
        "node-local"
    }
}

/// Run `fut` with the shared-state call timeout.
pub(crate) async fn bounded<T>(
    fut: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StateError::Timeout(CALL_TIMEOUT)),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
