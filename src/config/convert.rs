//! Tree -> `model::Config`: deserializes each top-level key, listener, route and pool on its
//! own (so one bad item does not hide the others), converts them (`TryFrom`), then runs the
//! cross-item checks of `checks.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::checks::{cross_checks, default_admin_listen, Gathered};
use super::de::from_node;
use super::error::{Issues, Pos};
use super::file::{AdminFile, Dur, ListenerFile, ProtocolFile, RouteFile, TOP_LEVEL_KEYS};
use super::model::{Admin, Config, Listener, Protocol, Route, State};
use super::node::{Located, Node, Value};
use super::pool::{convert_pool, nonzero_dur};
use super::state::StateFile;

/// A converted listener with the positions the cross-item checks need.
#[derive(Debug)]
pub(crate) struct ListenerItem {
    pub listener: Listener,
    pub pos: Pos,
    pub name_pos: Pos,
    pub listen_pos: Pos,
    pub pool_pos: Option<Pos>,
    /// Positions of the pools `sni_routes` names, in its order.
    pub sni_pool_pos: Vec<Pos>,
}

/// A converted route with the position of its `pool`.
#[derive(Debug)]
pub(crate) struct RouteItem {
    pub route: Route,
    pub pool_pos: Pos,
    /// Where `grpc_web: true` is (its pool must speak h2).
    pub grpc_web_pos: Option<Pos>,
}

/// `IP:PORT`, `[v6]:PORT`, `:PORT` or `*:PORT` (the last two: every IPv4 address).
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = t.strip_prefix("*:").or_else(|| t.strip_prefix(':')) {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    Err(format!(
        "invalid listen address \"{s}\", expected IP:PORT such as 0.0.0.0:8080"
    ))
}

/// A CIDR (`10.0.0.0/8`) or a bare IP (one host).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR \"{s}\" in trusted_proxies"))
}

impl TryFrom<Located<ListenerFile>> for ListenerItem {
    type Error = Issues;

    fn try_from(located: Located<ListenerFile>) -> Result<Self, Issues> {
        let (file, pos) = (located.value, located.pos);
        let mut issues = Issues::new();
        let name = file.name.value.trim().to_string();
        if name.is_empty() {
            issues.push(file.name.pos, "listener name must not be empty");
        }
        let listen = parse_listen(&file.listen.value).map_err(|m| issues.push(file.listen.pos, m));
        let protocol = match file.protocol.as_ref().map(|p| p.value) {
            None | Some(ProtocolFile::Http) => Protocol::Http,
            Some(ProtocolFile::Https) => Protocol::Https,
            Some(ProtocolFile::Tcp) => Protocol::Tcp,
        };
        if let Some(p) = file.pool.as_ref().filter(|p| p.value.trim().is_empty()) {
            issues.push(p.pos, "listener pool must not be empty");
        }
        let tls = match (&file.tls, protocol) {
            (Some(tls), Protocol::Https) => Some(super::tls::listener_tls(tls, &mut issues)),
            (Some(tls), _) => {
                issues.push(
                    tls.pos,
                    format!("tls is only allowed on https listeners (listener \"{name}\")"),
                );
                None
            }
            (None, Protocol::Https) => {
                let at = file.protocol.as_ref().map_or(pos, |p| p.pos);
                issues.push(at, format!("https listener \"{name}\" needs tls"));
                None
            }
            (None, _) => None,
        };
        let mut trusted_proxies = Vec::new();
        for cidr in file.trusted_proxies.iter().flatten() {
            match parse_cidr(&cidr.value) {
                Ok(net) => trusted_proxies.push(net),
                Err(m) => issues.push(cidr.pos, m),
            }
        }
        let idle_timeout = nonzero_dur(
            &file.idle_timeout,
            Duration::from_secs(60),
            "idle_timeout",
            &mut issues,
        );
        let http = super::tls::listener_http(&file, protocol, &mut issues);
        let l4 = super::l4::listener_l4(&file, protocol, &mut issues);
        let http3 = super::quic::listener_http3(&file, protocol, &mut issues);
        let limits = super::limits::limits(file.limits.as_ref(), &mut issues);
        let rate_limit = super::limits::ip_rate_limit(file.rate_limit.as_ref(), &mut issues);
        let normalize = super::normalize::listener_normalize(&file, protocol, &mut issues);
        let Ok(listen) = listen else {
            return Err(issues);
        };
        let listener = Listener {
            name,
            listen,
            protocol,
            pool: file.pool.as_ref().map(|p| p.value.trim().to_string()),
            trusted_proxies,
            idle_timeout,
            tls,
            h2c: http.h2c,
            redirect_https: http.redirect_https,
            hsts: http.hsts,
            accept_proxy: l4.accept_proxy,
            sni_routes: l4.sni_routes,
            limits,
            rate_limit,
            normalize,
            reuse_port: file.reuse_port.as_ref().is_some_and(|r| r.value),
            http3,
        };
        issues.result(ListenerItem {
            listener,
            pos,
            name_pos: file.name.pos,
            listen_pos: file.listen.pos,
            pool_pos: file.pool.as_ref().map(|p| p.pos),
            sni_pool_pos: l4.sni_pool_pos,
        })
    }
}

impl TryFrom<RouteFile> for RouteItem {
    type Error = Issues;

    fn try_from(file: RouteFile) -> Result<Self, Issues> {
        let mut issues = Issues::new();
        let host = file
            .host
            .as_ref()
            .map(|h| super::normalize::route_host(&h.value, h.pos, &mut issues));
        if let Some(p) = &file.path_prefix {
            super::normalize::path_prefix(p, &mut issues);
        }
        let grpc_web = super::pool::grpc_web_settings(
            file.grpc_web.as_ref(),
            file.grpc_web_origins.as_ref(),
            &mut issues,
        );
        let grpc_web_pos = grpc_web.as_ref().map(|(_, pos)| *pos);
        let route = Route {
            host,
            path_prefix: file.path_prefix.map(|p| p.value),
            pool: file.pool.value.trim().to_string(),
            compress: file
                .compress
                .as_ref()
                .and_then(|c| super::compress::compress(c, &mut issues)),
            cache: file
                .cache
                .as_ref()
                .and_then(|c| super::cache::cache(&c.value, &mut issues)),
            rate_limit: super::limits::ip_rate_limit(file.rate_limit.as_ref(), &mut issues),
            grpc_web: grpc_web.map(|(web, _)| web),
            client_cert_required: super::client_auth::route_client_cert(file.client_cert.as_ref()),
        };
        issues.result(RouteItem {
            route,
            pool_pos: file.pool.pos,
            grpc_web_pos,
        })
    }
}

/// The items of a list value (null = none), or an issue.
fn list<'a>(node: &'a Node, what: &str, issues: &mut Issues) -> &'a [Node] {
    match &node.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        _ => {
            issues.push(
                node.pos,
                format!("expected a list of {what}, got {}", node.kind()),
            );
            &[]
        }
    }
}

/// Deserializes `T` from `node`, recording a failure.
fn item<T: serde::de::DeserializeOwned>(node: &Node, issues: &mut Issues) -> Option<T> {
    from_node::<T>(node)
        .map_err(|i| issues.push(i.pos, i.message))
        .ok()
}

/// Converts, recording a failure.
fn conv<T>(r: Result<T, Issues>, issues: &mut Issues) -> Option<T> {
    r.map_err(|e| issues.extend(e)).ok()
}

fn gather(root: &Node, issues: &mut Issues) -> Gathered {
    let mut g = Gathered::default();
    let entries: &[(Node, Node)] = match &root.value {
        Value::Null => &[],
        Value::Map(entries) => entries,
        _ => {
            issues.push(
                root.pos,
                format!("expected a mapping of settings, got {}", root.kind()),
            );
            return g;
        }
    };
    for (key, value) in entries {
        let Some(name) = key.scalar_text() else {
            issues.push(key.pos, format!("expected a key name, got {}", key.kind()));
            continue;
        };
        let null = matches!(value.value, Value::Null);
        match name.as_str() {
            "threads" => match item::<Located<usize>>(value, issues) {
                Some(t) if t.value == 0 => issues.push(t.pos, "threads must be at least 1"),
                Some(t) => g.threads = Some(t.value),
                None => {}
            },
            "shutdown_grace" => match item::<Located<Dur>>(value, issues) {
                Some(d) if d.value.0.is_zero() => {
                    issues.push(d.pos, "shutdown_grace must be greater than 0")
                }
                Some(d) => g.shutdown_grace = Some(d.value.0),
                None => {}
            },
            "admin" if null => {}
            "admin" => {
                g.admin = item::<AdminFile>(value, issues).and_then(|a| admin(a, issues));
                g.admin_failed = g.admin.is_none();
            }
            "listeners" => {
                g.listeners_key = Some(key.pos);
                if !matches!(value.value, Value::Seq(_) | Value::Null) {
                    g.listeners_seen += 1; // reported as "expected a list", not as "none"
                }
                for node in list(value, "listeners", issues) {
                    g.listeners_seen += 1;
                    let file = item::<Located<ListenerFile>>(node, issues);
                    if let Some(l) = file.and_then(|f| conv(ListenerItem::try_from(f), issues)) {
                        g.listeners.push(l);
                    }
                }
            }
            "routes" => {
                for node in list(value, "routes", issues) {
                    g.routes_seen += 1;
                    let file = item::<RouteFile>(node, issues);
                    if let Some(r) = file.and_then(|f| conv(RouteItem::try_from(f), issues)) {
                        g.routes.push(r);
                    }
                }
            }
            "pools" => gather_pools(value, &mut g, issues),
            "state" if null => {}
            "state" => {
                g.state =
                    item::<StateFile>(value, issues).and_then(|s| super::state::state(s, issues))
            }
            "access_log" if null => g.access_log = Some(Default::default()),
            "access_log" => g.access_log = item(value, issues),
            "alerts" => {
                g.alerts =
                    item(value, issues).and_then(|a| super::alerts::alerts(a, value.pos, issues))
            }
            _ => issues.push(
                key.pos,
                format!(
                    "unknown field \"{name}\", expected one of: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ),
        }
    }
    g
}

fn gather_pools(value: &Node, g: &mut Gathered, issues: &mut Issues) {
    let entries = match &value.value {
        Value::Map(entries) => entries.as_slice(),
        Value::Null => &[],
        _ => {
            issues.push(
                value.pos,
                format!("expected a mapping of pools by name, got {}", value.kind()),
            );
            &[]
        }
    };
    for (key, node) in entries {
        let Some(name) = key.scalar_text() else {
            issues.push(key.pos, format!("expected a pool name, got {}", key.kind()));
            continue;
        };
        g.pool_names.push(name.trim().to_string());
        let name = Located {
            pos: key.pos,
            value: name.trim().to_string(),
        };
        if let Some(p) = conv(convert_pool(&name, node), issues) {
            g.pools.push(p);
        }
    }
}

fn admin(file: AdminFile, issues: &mut Issues) -> Option<(Admin, Option<Pos>)> {
    let mut ok = true;
    let listen = match &file.listen {
        None => default_admin_listen(),
        Some(l) => parse_listen(&l.value).unwrap_or_else(|m| {
            issues.push(l.pos, m);
            ok = false;
            default_admin_listen()
        }),
    };
    for t in [&file.token_env, &file.read_token_env]
        .into_iter()
        .flatten()
    {
        if t.value.is_empty() || t.value.contains(['=', '\0']) {
            issues.push(
                t.pos,
                format!("invalid environment variable name \"{}\"", t.value),
            );
            ok = false;
        }
    }
    if ok && file.token_env.is_none() && !listen.ip().is_loopback() {
        let at = file.listen.as_ref().map_or(Pos::START, |l| l.pos);
        issues.push(
            at,
            format!("admin address {listen} is not loopback: set admin.token_env"),
        );
    }
    let admin = Admin {
        listen,
        token_env: file.token_env.map(|t| t.value),
        ready_requires_backend: file.ready_requires_backend.is_none_or(|r| r.value),
        read_token_env: file.read_token_env.map(|t| t.value),
    };
    ok.then_some((admin, file.listen.map(|l| l.pos)))
}

/// Builds the validated config from the tree; every issue found is returned.
pub(crate) fn build(root: &Node, source: &Path) -> Result<Config, Issues> {
    let mut issues = Issues::new();
    let mut g = gather(root, &mut issues);
    let base = source.parent().unwrap_or(Path::new(""));
    for a in g.pools.iter_mut().filter_map(|p| p.pool.autoscale.as_mut()) {
        a.cwd = a.cwd.as_ref().map(|cwd| base.join(cwd));
    }
    cross_checks(&g, &mut issues);
    let (admin, _) = g.admin.unwrap_or((
        Admin {
            listen: default_admin_listen(),
            token_env: None,
            ready_requires_backend: true,
            read_token_env: None,
        },
        None,
    ));
    let threads = g.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut config = Config {
        source: source.to_path_buf(),
        hash: String::new(),
        threads,
        shutdown_grace: g.shutdown_grace.unwrap_or(Duration::from_secs(30)),
        admin,
        listeners: g.listeners.into_iter().map(|l| l.listener).collect(),
        routes: g.routes.into_iter().map(|r| r.route).collect(),
        pools: g.pools.into_iter().map(|p| p.pool).collect(),
        state: g.state.unwrap_or(State::Memory),
        access_log: g
            .access_log
            .take()
            .and_then(|a| super::access_log::access_log(a, base, &mut issues)),
        alerts: g.alerts.take(),
        warnings: Vec::new(),
    };
    super::tls::rebase_paths(&mut config, base);
    issues.result(config)
}
