//! Validated runtime configuration: what the file types become once every check passed.
//!
//! Nothing here derives `Deserialize`; values are built only by the conversions of this module
//! (`convert.rs` and one file per section: `pool.rs`, `autoscale.rs`, `health.rs`, ...).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use super::state::{Redis, RedisTls, Sentinel, State};

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from (used in messages and for reload).
    pub source: PathBuf,
    /// The config hash: xxh3-64 (16 hex digits) of the text it was loaded from, as
    /// `/health`, `/cluster/status` and a reload's answer show it.
    pub hash: String,
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
    /// `access_log:` (None: no access log).
    pub access_log: Option<super::AccessLog>,
    /// `alerts:` (None: no alerts).
    pub alerts: Option<super::Alerts>,
    /// Non-fatal findings of `tls::config_files::load` (an expired certificate, ...), each as
    /// `FILE:LINE:COL: warning: ...`; `autolb check` prints them and still exits 0.
    pub warnings: Vec<super::ConfigError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Default 127.0.0.1:9001.
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token for POSTs.
    pub token_env: Option<String>,
    /// `GET /health/ready` needs a pool with a ready backend (default true; false for a
    /// balancer whose pools scale from zero through it).
    pub ready_requires_backend: bool,
    /// Name of the environment variable holding the bearer token for reading (every GET
    /// but the probes and the dashboard page).
    pub read_token_env: Option<String>,
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
    /// `http` listeners: also serve HTTP/2 with prior knowledge (h2c) next to HTTP/1.1.
    pub h2c: bool,
    /// `http` listeners: answer every request with a 308 to `https://HOST[:port]/...`;
    /// the value is the https port (default 443, left out of the URL).
    pub redirect_https: Option<u16>,
    /// `https` listeners: the Strict-Transport-Security header added to responses.
    pub hsts: Option<Hsts>,
    /// Read a PROXY protocol (v1 or v2) header first and take its address as the client's.
    pub accept_proxy: bool,
    /// `tcp` listeners: TLS passthrough, routed on the ClientHello's server name (an exact
    /// name before wildcards); other connections go to `pool`, or are closed.
    pub sni_routes: Vec<super::SniRoute>,
    /// `limits:` sizes, counts and timeouts (hardening; safe defaults).
    pub limits: super::Limits,
    /// `rate_limit: {per_ip, burst}`: a token bucket per client IP.
    pub rate_limit: Option<super::IpRateLimit>,
    /// `normalize:` how request paths are put in normal form before routing.
    pub normalize: crate::uri::Policy,
    /// `reuse_port: true`: another process may listen on the same address (the kernel
    /// spreads connections over all of them). Default false: an address another process
    /// listens on is refused at start and at reload (`autolb run --upgrade` takes the
    /// sockets over instead).
    pub reuse_port: bool,
    /// `http3: true` (https listeners): HTTP/3 over QUIC on the same port, UDP, with these
    /// limits (`quic:`).
    pub http3: Option<super::Http3>,
}

/// `hsts: {max_age, include_subdomains, preload}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// Default 365 days.
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The Strict-Transport-Security header value.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// SNI picks among them by their names (wildcards too); the first is the default.
    pub certificates: Vec<CertPair>,
    pub alpn: Vec<String>,
    /// Refuse handshakes whose SNI matches no certificate (and those without SNI).
    pub strict_sni: bool,
    /// `acme:`: a certificate obtained and renewed by ACME, served beside `certificates`.
    pub acme: Option<super::acme::Acme>,
    /// `client_auth`: client certificates (mTLS).
    pub client_auth: Option<super::ClientAuth>,
    /// `ocsp_stapling: true`: OCSP responses fetched and stapled to the certificates.
    pub ocsp: Option<OcspStapling>,
    /// `session_tickets`: ticket key rotation and sharing.
    pub session_tickets: SessionTickets,
}

/// `tls.session_tickets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTickets {
    /// A new ticket key this often; a ticket opens for two periods.
    pub rotate: std::time::Duration,
    /// With `state.backend: redis`, one node makes the keys and every node uses them.
    pub shared: bool,
}

impl Default for SessionTickets {
    fn default() -> SessionTickets {
        SessionTickets {
            rotate: std::time::Duration::from_secs(6 * 3600),
            shared: false,
        }
    }
}

/// `ocsp_stapling: true` (and `ocsp_responder`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspStapling {
    /// `ocsp_responder`: an `http://` URL asked for every certificate instead of the one in
    /// its Authority Information Access extension.
    pub responder: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Exact host match (in normal form: lower case, no trailing dot; the request's host is
    /// normalized the same way, its port ignored); `None` matches any host. A leading `*.`
    /// matches any subdomain.
    pub host: Option<String>,
    /// Path prefix (in normal form; compared with the normalized path as a plain byte
    /// prefix, case-sensitively); `None` matches every path.
    pub path_prefix: Option<String>,
    pub pool: String,
    /// Responses of this route are compressed so (instead of by its pool's `compress`).
    pub compress: Option<super::Compress>,
    /// `cache:` the HTTP cache for this route (instead of its pool's `cache`).
    pub cache: Option<super::Cache>,
    /// `rate_limit: {per_ip, burst}`: a token bucket per client IP for this route (after
    /// the listener's).
    pub rate_limit: Option<super::IpRateLimit>,
    /// `grpc_web: true` on the route (instead of its pool's setting).
    pub grpc_web: Option<GrpcWeb>,
    /// `client_cert: required`: requests without a verified client certificate get 403.
    pub client_cert_required: bool,
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

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: &[Algorithm] = &[
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConn,
        Algorithm::P2c,
        Algorithm::PeakEwma,
        Algorithm::ConsistentHash,
        Algorithm::Random,
    ];

    /// The name `pools.*.balance` gives it (also in the admin API and reload diffs): the
    /// one place algorithm names are spelled.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::P2c => "p2c",
            Algorithm::PeakEwma => "peak_ewma",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::Random => "random",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.iter().copied().find(|a| a.name() == name)
    }
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
    /// HTTP version spoken to the backends (`protocol: h1 | h2`, default h1).
    pub protocol: UpstreamProtocol,
    /// `send_proxy: v1 | v2`: a PROXY protocol header on every backend connection.
    pub send_proxy: Option<super::ProxyVersion>,
    /// `tls:` speak https to the backends.
    pub tls: Option<UpstreamTls>,
    /// `compress:` gzip/brotli of responses (a route's `compress` wins over it).
    pub compress: Option<super::Compress>,
    /// `cache:` the HTTP cache in front of the pool (a route's `cache` wins over it).
    pub cache: Option<super::Cache>,
    /// `rate_limit:` per node or for the whole fleet (`scope: cluster`).
    pub rate_limit: Option<super::RateLimit>,
    /// `limits:` concurrency limit and bounded queue (None: no limit).
    pub limits: Option<super::PoolLimits>,
    /// `grpc_web: true`: gRPC-Web from browsers translated to gRPC (None: off).
    pub grpc_web: Option<GrpcWeb>,
}

/// `grpc_web: true` with `grpc_web_origins`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcWeb {
    /// Origins answered CORS preflights and allowed (`*`: any); empty: no CORS.
    pub origins: Vec<String>,
}

/// `pools.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    H1,
    /// HTTP/2: over TLS (ALPN h2) or with prior knowledge (h2c).
    H2,
}

/// `pools.NAME.tls: {sni, ca, verify, client_cert, client_key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent and verified (default: each backend's host name; an IP address
    /// sends no SNI and is verified against the certificate's IP addresses).
    pub sni: Option<String>,
    /// PEM bundle of trusted CAs (default: the system's bundle).
    pub ca: Option<PathBuf>,
    /// Verify the backend's certificate (default true).
    pub verify: bool,
    /// mTLS: the client certificate chain and its key.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
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
    /// gRPC statuses (`unavailable` ...) of Trailers-Only answers that are discarded and
    /// retried (the call is resent from a copy of its body; nothing was forwarded yet).
    pub grpc: Vec<u8>,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect_failure: true,
            reset: true,
            timeout: true,
            statuses: Vec::new(),
            grpc: Vec::new(),
        }
    }
}

/// Session affinity (`sticky:`): a cookie naming the backend, and/or keys hashed on the
/// consistent-hash ring for clients without the cookie. At least one is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    /// `cookie:` (also the default of an empty `sticky: {}`).
    pub cookie: Option<StickyCookie>,
    /// `source_ip: true`: the client IP, hashed.
    pub source_ip: bool,
    /// `header: NAME` (lower-case): that request header's value, hashed.
    pub header: Option<String>,
    /// `learn_cookie: NAME`: the application's own session cookie, learned from responses
    /// and mapped to its backend in the shared state.
    pub learn_cookie: Option<LearnCookie>,
}

/// `sticky.learn_cookie` and `sticky.learn_ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnCookie {
    /// The cookie name, as the application sets it (e.g. `JSESSIONID`).
    pub name: String,
    /// How long a learned session is kept after it was last seen set (default 1h).
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StickyCookie {
    /// Default `AUTOLB_SID`.
    pub name: String,
    /// Max-Age, and how long an unrefreshed cookie is honoured (default 1h).
    pub ttl: Duration,
    /// Default `/`.
    pub path: String,
    /// Default `Lax`.
    pub same_site: SameSite,
    /// `None` (default): Secure on https requests (and always with `SameSite=None`);
    /// `Some(true)`: always; `Some(false)`: never.
    pub secure: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    /// The attribute value as browsers expect it.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check`: SERVING passes.
    Grpc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Default `/health`.
    pub path: String,
    /// `type: grpc`: the service whose health is asked (default `""`, the whole server).
    pub service: String,
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
    /// An upgraded (WebSocket) connection silent both ways for this long is closed.
    /// Default 1h.
    pub websocket_idle: Duration,
    /// The longest a client waits for a response head, queueing, connects and every retry
    /// included. Default 60s.
    pub request_total: Duration,
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
    /// Most open TCP connections at once (tcp listeners); past it another backend is picked.
    pub max_connections: Option<u32>,
}

/// `autoscale.provider`: who runs the instances. Each has its behaviour in one file of
/// `src/autoscale/` (`process.rs`, `command.rs`) behind the `autoscale::provider::Provider`
/// trait; this enum is the one list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The embedded default: local processes on ports of `ports`.
    Process,
    /// The user's `scale` and `list` commands (or DNS discovery): instances elsewhere.
    Command,
}

impl Provider {
    /// Every provider, as `autoscale.provider` names it.
    pub const ALL: &[Provider] = &[Provider::Process, Provider::Command];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Process => "process",
            Provider::Command => "command",
        }
    }

    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.iter().copied().find(|p| p.name() == name)
    }
}

/// `autoscale.provider` with the keys that only it has.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    Process(ProcessProvider),
    Command(CommandProvider),
}

impl ProviderConfig {
    pub fn kind(&self) -> Provider {
        match self {
            ProviderConfig::Process(_) => Provider::Process,
            ProviderConfig::Command(_) => Provider::Command,
        }
    }

    /// The local ports instances listen on (`process` only).
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.process().map(|p| p.ports)
    }

    pub fn process(&self) -> Option<&ProcessProvider> {
        match self {
            ProviderConfig::Process(p) => Some(p),
            ProviderConfig::Command(_) => None,
        }
    }

    pub fn command(&self) -> Option<&CommandProvider> {
        match self {
            ProviderConfig::Command(c) => Some(c),
            ProviderConfig::Process(_) => None,
        }
    }
}

/// `provider: process` (the default): autolb starts the instances itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessProvider {
    /// argv; `{port}` and `{instance}` are substituted. A bare program name is looked up
    /// beside the autolb binary, then on PATH.
    pub command: Vec<String>,
    /// Inclusive port range instances listen on.
    pub ports: (u16, u16),
}

/// `provider: command`: the user's commands set the size and list the members.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandProvider {
    /// argv that sets the size (`{pool}`, `{count}` substituted).
    pub scale: Vec<String>,
    /// argv that prints the members as `[{"address":"host:port"}]`.
    pub list: Vec<String>,
    /// Members from DNS A records instead (`name:port`).
    pub discovery: Option<Discovery>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// Who runs the instances (default `process`), with its own keys.
    pub provider: ProviderConfig,
    /// Extra environment for the provider's programs (instances get PORT too).
    pub env: Vec<(String, String)>,
    /// Working directory of the provider's programs (default: autolb's).
    pub cwd: Option<PathBuf>,
    pub min: u32,
    pub max: u32,
    /// How often the policy runs (default 5s).
    pub interval: Duration,
    pub target: ScaleTarget,
    /// Where `target.prometheus` and `target.redis_list` read their values.
    pub external: super::ExternalTargets,
    /// Most instances added by one decision (default 4).
    pub scale_up_max_step: u32,
    /// Highest recommendation over this window wins before scaling down (default 300s).
    pub scale_down_stabilization: Duration,
    /// Most instances removed by one decision (default 1).
    pub scale_down_max_step: u32,
    /// Draining instances finish requests and WebSockets for at most this (default 30s).
    pub drain_timeout: Duration,
    /// SIGTERM, then SIGKILL after this (default 10s).
    pub stop_grace: Duration,
    /// A manual size holds this long before the policy may change it (default 10m).
    pub manual_hold: Duration,
    /// Scale from zero: requests held while the first instance starts (default 100).
    pub cold_start_queue: u32,
    /// ... for at most this long, then 503 (default 30s).
    pub cold_start_timeout: Duration,
    /// One autoscaler for the fleet: a leader (Redis lease with fencing) decides the
    /// fleet-wide size; each node runs its share (default false).
    pub shared: bool,
    /// The time zone of `schedule` (default UTC).
    pub timezone: chrono_tz::Tz,
    /// Bounds that change on a calendar (`schedule.rs`).
    pub schedule: Vec<super::ScheduleEntry>,
    /// Predictive pre-scaling (`None`: off).
    pub predictive: Option<super::Predictive>,
}

/// `autoscale.discovery`: the `command` provider's members from DNS, re-resolved when the
/// answer's TTL runs out and at least every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub query: DnsQuery,
    /// The DNS server asked (default: the system's, from /etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
    /// Longest time between two lookups (default 5s).
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// `dns: NAME:PORT`: the A records of `name`, each member on `port`.
    A { name: String, port: u16 },
    /// `dns_srv: NAME`: the SRV records of `name` (port and weight from each, its target's
    /// A records as addresses).
    Srv { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScaleTarget {
    pub inflight_per_instance: Option<u32>,
    pub rps_per_instance: Option<u32>,
    pub p95_latency_ms: Option<u32>,
    pub cpu_percent: Option<u32>,
    /// RSS per instance, in MiB.
    pub memory_mb: Option<u32>,
    /// `prometheus.per_instance`: the query's value per ready instance.
    pub prometheus: Option<f64>,
    /// `redis_list.per_instance`: list items per ready instance.
    pub redis_list: Option<f64>,
}
