//! File types: the YAML keys of DESIGN.md as serde structs (`deny_unknown_fields`), each
//! deserialized separately from the spanned tree; defaults and checks live in `convert.rs`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use super::node::Located;

/// A humantime duration (`250ms`, `2s`, `5m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 250ms, 2s or 5m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                use humantime::DurationError as H;
                humantime::parse_duration(v.trim()).map(Dur).map_err(|e| {
                    let why = match e {
                        H::UnknownUnit { unit, .. } => format!("unknown unit \"{unit}\""),
                        H::NumberOverflow => "too large or too precise".to_string(),
                        H::Empty => "empty".to_string(),
                        H::InvalidCharacter(_) | H::NumberExpected(_) => {
                            "expected a number and a unit".to_string()
                        }
                    };
                    E::custom(format_args!(
                        "invalid duration \"{v}\": {why} (e.g. 250ms, 2s, 5m)"
                    ))
                })
            }
        }
        d.deserialize_str(DurVisitor)
    }
}

/// A list item that is either a string or an integer (`retry_on`, `expected_status`);
/// a quoted number stays a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrOrInt {
    Str(String),
    Int(i128),
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrOrIntVisitor;
        impl Visitor<'_> for StrOrIntVisitor {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
        }
        d.deserialize_any(StrOrIntVisitor)
    }
}

/// `admin:`
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an admin mapping (listen, token_env, read_token_env, ready_requires_backend)"
)]
pub struct AdminFile {
    pub listen: Option<Located<String>>,
    pub token_env: Option<Located<String>>,
    pub ready_requires_backend: Option<Located<bool>>,
    pub read_token_env: Option<Located<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolFile {
    Http,
    Https,
    Tcp,
}

/// One item of `listeners:`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener mapping (name, listen, ...)"
)]
pub struct ListenerFile {
    pub name: Located<String>,
    pub listen: Located<String>,
    pub protocol: Option<Located<ProtocolFile>>,
    pub pool: Option<Located<String>>,
    pub tls: Option<Located<TlsFile>>,
    pub trusted_proxies: Option<Vec<Located<String>>>,
    pub idle_timeout: Option<Located<Dur>>,
    pub h2c: Option<Located<bool>>,
    pub redirect_https: Option<Located<bool>>,
    pub https_port: Option<Located<u64>>,
    pub hsts: Option<Located<HstsFile>>,
    /// Read a PROXY protocol v1/v2 header first (see `l4.rs`).
    pub accept_proxy: Option<Located<bool>>,
    /// `tcp` listeners: TLS passthrough, server name -> pool.
    pub sni_routes: Option<Located<super::l4::SniRoutesFile>>,
    pub limits: Option<Located<super::limits::LimitsFile>>,
    pub rate_limit: Option<Located<super::limits::IpRateLimitFile>>,
    /// How request paths are normalized before routing (see `normalize.rs`).
    pub normalize: Option<Located<super::normalize::NormalizeFile>>,
    /// Let other processes listen on the same address (SO_REUSEPORT across processes).
    pub reuse_port: Option<Located<bool>>,
    /// `https` listeners: also serve HTTP/3 over QUIC on the same port (UDP).
    pub http3: Option<Located<bool>>,
    /// Its QUIC limits (see `quic.rs`).
    pub quic: Option<Located<super::quic::QuicFile>>,
}

/// `listeners[].hsts:`
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an hsts mapping (max_age, include_subdomains, preload)"
)]
pub struct HstsFile {
    pub max_age: Option<Located<Dur>>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<bool>,
}

/// `listeners[].tls:`
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a tls mapping (certificates, alpn, strict_sni)"
)]
pub struct TlsFile {
    pub certificates: Option<Located<Vec<CertFile>>>,
    pub alpn: Option<Vec<Located<String>>>,
    pub strict_sni: Option<bool>,
    /// Certificates obtained by ACME (see `acme.rs`).
    pub acme: Option<Located<super::acme::AcmeFile>>,
    /// Client certificates (mTLS), see `client_auth.rs`.
    pub client_auth: Option<Located<super::client_auth::ClientAuthFile>>,
    /// Staple OCSP responses (`ocsp_stapling: true`), from `ocsp_responder` if set.
    pub ocsp_stapling: Option<bool>,
    pub ocsp_responder: Option<Located<String>>,
    /// TLS session-ticket keys: rotation, sharing across the fleet.
    pub session_tickets: Option<SessionTicketsFile>,
}

/// `tls.session_tickets`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a session_tickets mapping (rotate, shared)"
)]
pub struct SessionTicketsFile {
    pub rotate: Option<Located<Dur>>,
    pub shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a certificate mapping (cert, key)")]
pub struct CertFile {
    pub cert: Located<String>,
    pub key: Located<String>,
}

/// One item of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a route mapping (host, path_prefix, pool, ...)"
)]
pub struct RouteFile {
    pub host: Option<Located<String>>,
    pub path_prefix: Option<Located<String>>,
    pub pool: Located<String>,
    pub compress: Option<super::compress::CompressFile>,
    pub cache: Option<Located<super::cache::CacheFile>>,
    pub rate_limit: Option<Located<super::limits::IpRateLimitFile>>,
    /// `grpc_web: true`: this route's gRPC-Web requests translated to gRPC (its pool needs
    /// `protocol: h2`), whatever its pool says.
    pub grpc_web: Option<Located<bool>>,
    pub grpc_web_origins: Option<Located<Vec<Located<String>>>>,
    /// `client_cert: required`: a verified client certificate or 403.
    pub client_cert: Option<Located<super::client_auth::ClientCertFile>>,
}

/// One value of `pools:` (its `backends` are deserialized one by one, separately).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool mapping (balance, backends, ...)"
)]
pub struct PoolFile {
    /// An algorithm's name (`config::Algorithm::name`).
    pub balance: Option<Located<String>>,
    pub hash_key: Option<Located<String>>,
    pub sticky: Option<Located<StickyFile>>,
    pub health_check: Option<Located<HealthCheckFile>>,
    pub outlier: Option<Located<OutlierFile>>,
    pub retries: Option<Located<u32>>,
    pub retry_methods: Option<Vec<Located<String>>>,
    pub retry_on: Option<Vec<Located<StrOrInt>>>,
    pub timeouts: Option<TimeoutsFile>,
    pub slow_start: Option<Located<Dur>>,
    pub panic_threshold: Option<Located<u32>>,
    /// Placeholder so the key is known; see `BackendFile`.
    #[allow(dead_code)]
    pub backends: Option<IgnoredAny>,
    pub autoscale: Option<Located<AutoscaleFile>>,
    pub protocol: Option<Located<UpstreamProtocolFile>>,
    /// Write a PROXY protocol header on every backend connection.
    pub send_proxy: Option<Located<super::l4::ProxyVersion>>,
    pub tls: Option<Located<UpstreamTlsFile>>,
    pub compress: Option<super::compress::CompressFile>,
    pub cache: Option<Located<super::cache::CacheFile>>,
    pub rate_limit: Option<Located<super::rate_limit::RateLimitFile>>,
    pub limits: Option<Located<super::pool_limits::PoolLimitsFile>>,
    /// `grpc_web: true`: gRPC-Web requests translated to gRPC.
    pub grpc_web: Option<Located<bool>>,
    /// Origins whose browsers may call (CORS), `"*"` for any.
    pub grpc_web_origins: Option<Located<Vec<Located<String>>>>,
}

/// `pools.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocolFile {
    H1,
    H2,
}

/// `pools.NAME.tls:`
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a tls mapping (sni, ca, verify, client_cert, client_key)"
)]
pub struct UpstreamTlsFile {
    pub sni: Option<Located<String>>,
    pub ca: Option<Located<String>>,
    pub verify: Option<bool>,
    pub client_cert: Option<Located<String>>,
    pub client_key: Option<Located<String>>,
}

/// `pools.NAME.sticky:` (checked in `sticky.rs`).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a sticky mapping (cookie, source_ip, header, learn_cookie, learn_ttl)"
)]
pub struct StickyFile {
    pub cookie: Option<Located<CookieFile>>,
    pub source_ip: Option<Located<bool>>,
    pub header: Option<Located<String>>,
    pub learn_cookie: Option<Located<String>>,
    pub learn_ttl: Option<Located<Dur>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cookie mapping (name, ttl, path, same_site, secure)"
)]
pub struct CookieFile {
    pub name: Option<Located<String>>,
    pub ttl: Option<Located<Dur>>,
    pub path: Option<Located<String>>,
    pub same_site: Option<Located<String>>,
    pub secure: Option<Located<bool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKindFile {
    Http,
    Tcp,
    Grpc,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a health_check mapping (type, path, interval, ...)"
)]
pub struct HealthCheckFile {
    #[serde(rename = "type")]
    pub kind: Option<Located<HealthKindFile>>,
    pub path: Option<Located<String>>,
    /// `type: grpc`: the service asked about (`""`: the server as a whole).
    pub service: Option<Located<String>>,
    pub host: Option<Located<String>>,
    pub expected_status: Option<Located<Vec<Located<StrOrInt>>>>,
    pub port: Option<Located<u64>>,
    pub interval: Option<Located<Dur>>,
    pub timeout: Option<Located<Dur>>,
    pub rise: Option<Located<u32>>,
    pub fall: Option<Located<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an outlier mapping (consecutive_failures, ejection, ...)"
)]
pub struct OutlierFile {
    pub consecutive_failures: Option<Located<u32>>,
    pub ejection: Option<Located<Dur>>,
    pub max_ejection: Option<Located<Dur>>,
    pub max_ejection_percent: Option<Located<u32>>,
    pub count: Option<Located<Vec<Located<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a timeouts mapping (connect, response, idle, websocket_idle, request_total)"
)]
pub struct TimeoutsFile {
    pub connect: Option<Located<Dur>>,
    pub response: Option<Located<Dur>>,
    pub idle: Option<Located<Dur>>,
    pub websocket_idle: Option<Located<Dur>>,
    pub request_total: Option<Located<Dur>>,
}

/// One item of `pools.NAME.backends:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a backend mapping (address, weight)")]
pub struct BackendFile {
    pub address: Located<String>,
    pub weight: Option<Located<u32>>,
    pub disabled: Option<bool>,
    pub max_connections: Option<Located<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an autoscale mapping (command, ports, ...)"
)]
pub struct AutoscaleFile {
    pub provider: Option<Located<String>>,
    pub command: Option<Located<Vec<String>>>,
    pub env: Option<EnvFile>,
    pub cwd: Option<Located<String>>,
    pub ports: Option<Located<String>>,
    pub min: Option<Located<u32>>,
    pub max: Option<Located<u32>>,
    pub interval: Option<Located<Dur>>,
    pub target: Option<Located<TargetFile>>,
    pub scale_up: Option<ScaleUpFile>,
    pub scale_down: Option<ScaleDownFile>,
    pub drain_timeout: Option<Located<Dur>>,
    pub stop_grace: Option<Located<Dur>>,
    pub manual_hold: Option<Located<Dur>>,
    pub cold_start_queue: Option<Located<u32>>,
    pub cold_start_timeout: Option<Located<Dur>>,
    /// One autoscaler for the fleet (leader elected through the shared state).
    pub shared: Option<Located<bool>>,
    /// `provider: command`: argv run to set the size (`{pool}`, `{count}`).
    pub scale: Option<Located<Vec<String>>>,
    /// `provider: command`: argv printing the members as JSON.
    pub list: Option<Located<Vec<String>>>,
    /// `provider: command`: members from DNS (A or SRV records) instead of `list`.
    pub discovery: Option<Located<DiscoveryFile>>,
    /// The time zone of `schedule` (an IANA name; default UTC).
    pub timezone: Option<Located<String>>,
    /// Bounds that change on a calendar.
    pub schedule: Option<Located<Vec<Located<super::schedule::ScheduleFile>>>>,
    /// Scale ahead of recurring rises.
    pub predictive: Option<Located<super::schedule::PredictiveFile>>,
}

/// `autoscale.discovery:`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a discovery mapping (dns or dns_srv, resolver, interval)"
)]
pub struct DiscoveryFile {
    /// `NAME:PORT`: A records, each member on PORT.
    pub dns: Option<Located<String>>,
    /// An SRV name: members' ports and weights from the records, targets resolved.
    pub dns_srv: Option<Located<String>>,
    /// `IP` or `IP:PORT` of the DNS server to ask (default: the system's).
    pub resolver: Option<Located<String>>,
    pub interval: Option<Located<Dur>>,
}

/// `autoscale.env`: a mapping of strings, in file order, each key and value located.
#[derive(Debug, Default)]
pub struct EnvFile(pub Vec<(Located<String>, Located<String>)>);

impl<'de> Deserialize<'de> for EnvFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvVisitor;

        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an env mapping (NAME: value)")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EnvFile, A::Error> {
                let mut vars = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    vars.push(entry);
                }
                Ok(EnvFile(vars))
            }
        }

        d.deserialize_map(EnvVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a target mapping (inflight_per_instance, rps_per_instance, p95_latency_ms, cpu_percent, memory_mb, prometheus, redis_list)"
)]
pub struct TargetFile {
    pub inflight_per_instance: Option<Located<u32>>,
    pub rps_per_instance: Option<Located<u32>>,
    pub p95_latency_ms: Option<Located<u32>>,
    pub cpu_percent: Option<Located<u32>>,
    pub memory_mb: Option<Located<u32>>,
    pub prometheus: Option<Located<super::autoscale_external::PrometheusFile>>,
    pub redis_list: Option<Located<super::autoscale_external::RedisListFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a scale_up mapping (max_step)")]
pub struct ScaleUpFile {
    pub max_step: Option<Located<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a scale_down mapping (stabilization, max_step)"
)]
pub struct ScaleDownFile {
    pub stabilization: Option<Located<Dur>>,
    pub max_step: Option<Located<u32>>,
}

/// The top-level keys, in the order they are documented.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "threads",
    "shutdown_grace",
    "admin",
    "listeners",
    "routes",
    "pools",
    "state",
    "access_log",
    "alerts",
];
