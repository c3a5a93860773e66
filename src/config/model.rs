//! Validated runtime configuration: what the file types become once every check passed.
//!
//! Nothing here derives `Deserialize`; values are built only by `TryFrom` in `convert.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from (used in messages and for reload).
    pub source: PathBuf,
    /// Data-plane worker threads (default: number of cores).
    pub threads: usize,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT (default 30s).
    pub shutdown_grace: Duration,
    pub admin: Admin,
    pub listeners: Vec<Listener>,
    /// In file order: the first match wins.
    pub routes: Vec<Route>,
    /// In file order (a `BTreeMap` in the file keeps key order sorted; we keep the file's order).
    pub pools: Vec<Pool>,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Default 127.0.0.1:9001.
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token for POSTs.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// Default pool by name (for `tcp`: the only pool).
    pub pool: Option<String>,
    /// Clients inside these networks may supply X-Forwarded-* / Forwarded; others are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Keep-alive idle and header-read timeout for client connections (default 60s).
    pub idle_timeout: Duration,
    /// `https` listeners only (checked to be present there, absent elsewhere).
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub certificates: Vec<CertPair>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Exact host match (case-insensitive, port ignored); `None` matches any host.
    /// A leading `*.` matches any subdomain.
    pub host: Option<String>,
    /// Path prefix; `None` matches every path.
    pub path_prefix: Option<String>,
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    P2c,
    PeakEwma,
    ConsistentHash,
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    Header(String),
    Cookie(String),
    Uri,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Algorithm,
    /// Only for `consistent_hash` (default `source_ip`).
    pub hash_key: HashKey,
    pub sticky: Option<Sticky>,
    pub health_check: Option<HealthCheck>,
    pub outlier: Option<Outlier>,
    /// Default 2.
    pub retries: u32,
    /// Methods retried after the request was sent (only without a body).
    /// Default GET, HEAD, OPTIONS, PUT, DELETE.
    pub retry_methods: Vec<http::Method>,
    /// What makes an attempt fail and be retried (default connect_failure, reset, timeout).
    pub retry_on: RetryOn,
    pub timeouts: Timeouts,
    /// A recovered or new backend's weight ramps from 10% to 100% over this window (None: off).
    pub slow_start: Option<Duration>,
    /// Below this share of healthy backends (0-100), balance over all of them (0: off).
    pub panic_threshold: u8,
    pub backends: Vec<Backend>,
    pub autoscale: Option<Autoscale>,
}

/// Retry conditions (`retry_on: [connect_failure, reset, timeout, 502, 503, 504]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// Connection refused or connect timeout: nothing was sent, safe for every method.
    pub connect_failure: bool,
    /// Connection reset or closed after sending, before a response head.
    pub reset: bool,
    /// No response head within `timeouts.response`.
    pub timeout: bool,
    /// Response statuses (5xx) that are discarded and retried; nothing was forwarded yet.
    pub statuses: Vec<u16>,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect_failure: true,
            reset: true,
            timeout: true,
            statuses: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    pub cookie_name: String,
    pub cookie_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Default `/health`.
    pub path: String,
    /// Host header of http checks (default: the backend's address).
    pub host: Option<String>,
    /// Statuses that pass an http check: inclusive ranges (default 200-399).
    pub expected_status: Vec<(u16, u16)>,
    /// Check this port instead of the backend's own.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    /// First ejection time; each repeat doubles it up to `max_ejection`.
    pub ejection: Duration,
    /// Default 300s (and at least `ejection`).
    pub max_ejection: Duration,
    /// Never eject more than this share of a pool (0-100, default 50).
    pub max_ejection_percent: u8,
    /// Which failures count (default all).
    pub count: OutlierCount,
}

/// `outlier.count: [connect_failure, reset, timeout, 5xx]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierCount {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub status_5xx: bool,
}

impl Default for OutlierCount {
    fn default() -> Self {
        OutlierCount {
            connect_failure: true,
            reset: true,
            timeout: true,
            status_5xx: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Default 2s.
    pub connect: Duration,
    /// Time to the first response byte (headers). Default 30s.
    pub response: Duration,
    /// Inactivity on a backend connection, and how long an unused pooled connection is kept.
    /// Default 60s.
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// As written in the file (`host:port`), used as its name in metrics and status.
    pub address: String,
    /// Resolved once at load time.
    pub addr: SocketAddr,
    /// 1..=256, default 1.
    pub weight: u32,
    /// HAProxy `disabled`: configured but in maintenance, never picked.
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    pub provider: String,
    pub command: Vec<String>,
    pub ports: (u16, u16),
    pub min: u32,
    pub max: u32,
    pub target: ScaleTarget,
    pub scale_down_stabilization: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScaleTarget {
    pub inflight_per_instance: Option<u32>,
    pub p95_latency_ms: Option<u32>,
    pub cpu_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Memory,
    Redis { url: String },
}
