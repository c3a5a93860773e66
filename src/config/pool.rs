//! Pool conversion: `PoolFile` (+ its backends, deserialized one by one) -> `model::Pool`,
//! with every per-pool check (weights, addresses, hash keys); health checks and outlier
//! detection are in `health.rs`, retries in `retry.rs`, autoscale in `autoscale.rs`.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::autoscale::autoscale;
use super::de::from_node;
use super::error::{Issues, Pos};
use super::file::{BackendFile, PoolFile, TimeoutsFile};
use super::health::{health, outlier};
use super::model::{
    Algorithm, Backend, HashKey, HealthCheckKind, Pool, Timeouts, UpstreamProtocol,
};
use super::node::{Located, Node, Value};
use super::retry::{percent, retry_methods, retry_on};
use super::sticky::sticky;

/// A converted pool with the positions the cross-item checks need.
#[derive(Debug)]
pub(crate) struct PoolItem {
    pub pool: Pool,
    /// Position of `autoscale.ports` (or of `autoscale`).
    pub ports_pos: Option<Pos>,
    /// Position of `autoscale.target.redis_list` (it needs the shared-state Redis).
    pub redis_list_pos: Option<Pos>,
}

/// Value of an optional located field, or a default.
pub(crate) fn or<T: Clone>(field: &Option<Located<T>>, default: T) -> T {
    field.as_ref().map_or(default, |l| l.value.clone())
}

/// A duration field that must not be zero.
pub(crate) fn nonzero_dur(
    field: &Option<Located<super::file::Dur>>,
    default: Duration,
    what: &str,
    issues: &mut Issues,
) -> Duration {
    match field {
        Some(l) if l.value.0.is_zero() => {
            issues.push(l.pos, format!("{what} must be greater than 0"));
            default
        }
        Some(l) => l.value.0,
        None => default,
    }
}

/// A count field that must not be zero.
pub(crate) fn nonzero(
    field: &Option<Located<u32>>,
    default: u32,
    what: &str,
    issues: &mut Issues,
) -> u32 {
    match field {
        Some(l) if l.value == 0 => {
            issues.push(l.pos, format!("{what} must be at least 1"));
            default
        }
        Some(l) => l.value,
        None => default,
    }
}

/// Converts the pool `name` whose value is `node`, collecting every issue.
pub(crate) fn convert_pool(name: &Located<String>, node: &Node) -> Result<PoolItem, Issues> {
    let mut issues = Issues::new();
    if name.value.trim().is_empty() {
        issues.push(name.pos, "pool name must not be empty");
    }
    let file = from_node::<PoolFile>(node).map_err(|i| issues.push(i.pos, i.message));
    let backends = convert_backends(&name.value, node.get("backends"), &mut issues);
    let Ok(file) = file else {
        return Err(issues);
    };
    let balance = match &file.balance {
        None => Algorithm::RoundRobin,
        Some(b) => Algorithm::from_name(&b.value).unwrap_or_else(|| {
            let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            issues.push(
                b.pos,
                format!(
                    "unknown value \"{}\", expected one of: {}",
                    b.value,
                    known.join(", ")
                ),
            );
            Algorithm::RoundRobin
        }),
    };
    let hash_key = match &file.hash_key {
        None => HashKey::SourceIp,
        Some(l) => parse_hash_key(&l.value).unwrap_or_else(|m| {
            issues.push(l.pos, m);
            HashKey::SourceIp
        }),
    };
    let sticky = file.sticky.as_ref().map(|s| sticky(s, &mut issues));
    let health_check = file
        .health_check
        .as_ref()
        .map(|h| health(&h.value, &mut issues));
    let outlier = file
        .outlier
        .as_ref()
        .map(|o| outlier(&o.value, &mut issues));
    let timeouts = timeouts(file.timeouts.as_ref(), &mut issues);
    let (autoscale, ports_pos) = match &file.autoscale {
        Some(a) => {
            let ports_pos = a.value.ports.as_ref().map_or(a.pos, |p| p.pos);
            (autoscale(a, &mut issues), Some(ports_pos))
        }
        None => (None, None),
    };
    if file.autoscale.is_none() && backends.as_ref().is_some_and(|b| b.is_empty()) {
        issues.push(
            name.pos,
            format!("pool \"{}\" has no backends and no autoscale", name.value),
        );
    }
    let (protocol, tls) = super::tls::pool_upstream(&file, &mut issues);
    if let (Some(h), Some(hc)) = (&file.health_check, &health_check) {
        if hc.kind == HealthCheckKind::Grpc && protocol != UpstreamProtocol::H2 {
            issues.push(
                h.pos,
                format!(
                    "pool \"{}\": health_check type grpc needs protocol: h2",
                    name.value
                ),
            );
        }
    }
    let pool = Pool {
        name: name.value.clone(),
        balance,
        hash_key,
        sticky,
        health_check,
        outlier,
        retries: or(&file.retries, 2),
        retry_methods: retry_methods(&file.retry_methods, &mut issues),
        retry_on: retry_on(&file.retry_on, &mut issues),
        timeouts,
        slow_start: file
            .slow_start
            .as_ref()
            .map(|_| nonzero_dur(&file.slow_start, Duration::ZERO, "slow_start", &mut issues)),
        panic_threshold: percent(&file.panic_threshold, 0, "panic_threshold", &mut issues),
        backends: backends.unwrap_or_default(),
        autoscale,
        protocol,
        send_proxy: file.send_proxy.as_ref().map(|v| v.value),
        tls,
        compress: file
            .compress
            .as_ref()
            .and_then(|c| super::compress::compress(c, &mut issues)),
        cache: file
            .cache
            .as_ref()
            .and_then(|c| super::cache::cache(&c.value, &mut issues)),
        rate_limit: file
            .rate_limit
            .as_ref()
            .and_then(|r| super::rate_limit::rate_limit(r, &mut issues)),
        limits: file
            .limits
            .as_ref()
            .and_then(|l| super::pool_limits::pool_limits(l, &mut issues)),
        grpc_web: grpc_web(&file, protocol, &mut issues),
    };
    let redis_list_pos = file
        .autoscale
        .as_ref()
        .and_then(|a| a.value.target.as_ref())
        .and_then(|t| t.value.redis_list.as_ref())
        .map(|r| r.pos);
    issues.result(PoolItem {
        pool,
        ports_pos,
        redis_list_pos,
    })
}

/// Deserializes and checks each backend separately; `None` if any failed.
fn convert_backends(pool: &str, node: Option<&Node>, issues: &mut Issues) -> Option<Vec<Backend>> {
    let items: &[Node] = match node.map(|n| (n, &n.value)) {
        None | Some((_, Value::Null)) => &[],
        Some((_, Value::Seq(items))) => items,
        Some((n, _)) => {
            issues.push(
                n.pos,
                format!("expected a list of backends, got {}", n.kind()),
            );
            return None;
        }
    };
    let mut ok = true;
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, Pos> = HashMap::new();
    for item in items {
        match from_node::<BackendFile>(item).map_err(|i| Issues::one(i.pos, i.message)) {
            Ok(file) => match <(Backend, Pos)>::try_from(file) {
                Ok((backend, pos)) => {
                    if let Some(first) = seen.get(&backend.addr) {
                        issues.push(
                            pos,
                            format!(
                                "duplicate backend {} in pool \"{pool}\" (first at line {})",
                                backend.address, first.line
                            ),
                        );
                        ok = false;
                    } else {
                        seen.insert(backend.addr, pos);
                    }
                    out.push(backend);
                }
                Err(e) => {
                    issues.extend(e);
                    ok = false;
                }
            },
            Err(e) => {
                issues.extend(e);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

impl TryFrom<BackendFile> for (Backend, Pos) {
    type Error = Issues;

    fn try_from(file: BackendFile) -> Result<Self, Issues> {
        let mut issues = Issues::new();
        let address = file.address.value.trim().to_string();
        let addr = resolve_backend(&address).map_err(|m| issues.push(file.address.pos, m));
        let weight = match &file.weight {
            Some(w) if !(1..=256).contains(&w.value) => {
                issues.push(
                    w.pos,
                    format!("weight must be between 1 and 256, got {}", w.value),
                );
                1
            }
            w => or(w, 1),
        };
        let max_connections = super::l4::max_connections(&file.max_connections, &mut issues);
        match addr {
            Ok(addr) if issues.is_empty() => Ok((
                Backend {
                    address,
                    addr,
                    weight,
                    disabled: file.disabled.unwrap_or(false),
                    max_connections,
                },
                file.address.pos,
            )),
            _ => Err(issues),
        }
    }
}

/// `host:port` -> the first address it resolves to.
pub(crate) fn resolve_backend(address: &str) -> Result<SocketAddr, String> {
    if address.is_empty() {
        return Err("backend address must not be empty".to_string());
    }
    if address.contains("://") || address.contains('/') {
        return Err(format!(
            "backend address \"{address}\" must be HOST:PORT (no scheme or path)"
        ));
    }
    let addr = match address.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(format!(
                    "backend address \"{address}\" has no port (expected HOST:PORT)"
                ));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!(
                    "invalid backend address \"{address}\" (expected HOST:PORT)"
                ));
            }
            match address.to_socket_addrs() {
                // Prefer IPv4 (as HAProxy does): `localhost` often lists ::1 first.
                Ok(addrs) => {
                    let all: Vec<SocketAddr> = addrs.collect();
                    all.iter()
                        .find(|a| a.is_ipv4())
                        .or(all.first())
                        .copied()
                        .ok_or_else(|| {
                            format!("backend address \"{address}\" does not resolve to any address")
                        })?
                }
                Err(e) => {
                    return Err(format!(
                        "backend address \"{address}\" does not resolve: {e}"
                    ))
                }
            }
        }
    };
    if addr.port() == 0 {
        return Err(format!("backend address \"{address}\" has port 0"));
    }
    Ok(addr)
}

/// An HTTP token (RFC 9110 `tchar`s), as header and cookie names must be.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `source_ip | uri | header:NAME | cookie:NAME`.
pub(crate) fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let s = s.trim();
    let named = |kind: &str, name: &str| -> Result<String, String> {
        if name.is_empty() {
            Err(format!("invalid hash_key \"{s}\": {kind} name is empty"))
        } else if !is_token(name) {
            Err(format!(
                "invalid hash_key \"{s}\": bad {kind} name \"{name}\""
            ))
        } else {
            Ok(name.to_string())
        }
    };
    match s {
        "source_ip" => Ok(HashKey::SourceIp),
        "uri" => Ok(HashKey::Uri),
        _ => {
            if let Some(name) = s.strip_prefix("header:") {
                Ok(HashKey::Header(named("header", name)?.to_ascii_lowercase()))
            } else if let Some(name) = s.strip_prefix("cookie:") {
                Ok(HashKey::Cookie(named("cookie", name)?))
            } else {
                Err(format!(
                    "unknown hash_key \"{s}\", expected one of: source_ip, uri, header:NAME, cookie:NAME"
                ))
            }
        }
    }
}

fn timeouts(file: Option<&TimeoutsFile>, issues: &mut Issues) -> Timeouts {
    let none = None;
    let (connect, response, idle, websocket_idle, request_total) = match file {
        Some(t) => (
            &t.connect,
            &t.response,
            &t.idle,
            &t.websocket_idle,
            &t.request_total,
        ),
        None => (&none, &none, &none, &none, &none),
    };
    Timeouts {
        connect: nonzero_dur(connect, Duration::from_secs(2), "timeouts.connect", issues),
        response: nonzero_dur(
            response,
            Duration::from_secs(30),
            "timeouts.response",
            issues,
        ),
        idle: nonzero_dur(idle, Duration::from_secs(60), "timeouts.idle", issues),
        websocket_idle: nonzero_dur(
            websocket_idle,
            Duration::from_secs(3600),
            "timeouts.websocket_idle",
            issues,
        ),
        request_total: nonzero_dur(
            request_total,
            Duration::from_secs(60),
            "timeouts.request_total",
            issues,
        ),
    }
}

/// `grpc_web` and `grpc_web_origins` of a pool (`protocol: h2` needed).
fn grpc_web(
    file: &PoolFile,
    protocol: UpstreamProtocol,
    issues: &mut Issues,
) -> Option<super::model::GrpcWeb> {
    let (web, pos) = grpc_web_settings(
        file.grpc_web.as_ref(),
        file.grpc_web_origins.as_ref(),
        issues,
    )?;
    if protocol != UpstreamProtocol::H2 {
        issues.push(pos, GRPC_WEB_NEEDS_H2);
    }
    Some(web)
}

pub(crate) const GRPC_WEB_NEEDS_H2: &str = "grpc_web needs protocol: h2 (gRPC backends)";

/// `grpc_web` and `grpc_web_origins` of a pool or a route, and where `grpc_web: true` is
/// (the caller checks that the pool speaks h2).
pub(crate) fn grpc_web_settings(
    on: Option<&Located<bool>>,
    origins: Option<&Located<Vec<Located<String>>>>,
    issues: &mut Issues,
) -> Option<(super::model::GrpcWeb, super::error::Pos)> {
    let on = on.filter(|g| g.value);
    let listed = origins.filter(|o| !o.value.is_empty());
    if let (Some(o), None) = (listed, on) {
        issues.push(o.pos, "grpc_web_origins needs grpc_web: true");
    }
    let on = on?;
    let mut origins_ok = Vec::new();
    for o in origins.iter().flat_map(|o| &o.value) {
        let v = o.value.trim().trim_end_matches('/');
        let ok = v == "*"
            || ((v.starts_with("http://") || v.starts_with("https://"))
                && http::HeaderValue::from_str(v).is_ok()
                && !v[v.find("//").map_or(0, |i| i + 2)..].contains('/'));
        if ok {
            origins_ok.push(v.to_ascii_lowercase());
        } else {
            issues.push(
                o.pos,
                format!("invalid grpc_web_origins item \"{}\", expected \"*\" or an origin like https://app.example.com", o.value),
            );
        }
    }
    Some((
        super::model::GrpcWeb {
            origins: origins_ok,
        },
        on.pos,
    ))
}
