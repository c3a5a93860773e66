//! Cross-item checks over everything gathered from the file: pool references, listener
//! names, address collisions (listeners and admin), autoscale port ranges.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::convert::{ListenerItem, RouteItem};
use super::error::{Issues, Pos};
use super::model::{Admin, Protocol, State};
use super::pool::PoolItem;

/// Everything gathered from the tree, before the cross-item checks.
#[derive(Default)]
pub(crate) struct Gathered {
    pub threads: Option<usize>,
    pub shutdown_grace: Option<std::time::Duration>,
    pub admin: Option<(Admin, Option<Pos>)>,
    pub admin_failed: bool,
    pub listeners_key: Option<Pos>,
    pub listeners_seen: usize,
    pub listeners: Vec<ListenerItem>,
    pub routes_seen: usize,
    pub routes: Vec<RouteItem>,
    pub pool_names: Vec<String>,
    pub pools: Vec<PoolItem>,
    pub state: Option<State>,
    /// `access_log:` as written (converted by `build`, which knows the config's directory).
    pub access_log: Option<super::access_log::AccessLogFile>,
    pub alerts: Option<super::alerts::Alerts>,
}

/// Whether two listening sockets would collide (port 0 never does).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}

fn known(names: &[String]) -> String {
    if names.is_empty() {
        "no pools defined".to_string()
    } else {
        format!("known: {}", names.join(", "))
    }
}

pub(crate) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9001))
}

pub(crate) fn cross_checks(g: &Gathered, issues: &mut Issues) {
    if g.listeners_seen == 0 {
        issues.push(
            g.listeners_key.unwrap_or(Pos::START),
            "no listeners defined",
        );
    }
    let mut names: HashMap<&str, Pos> = HashMap::new();
    // The admin address and where it was written (None: the default); unknown if it failed.
    let admin_at = match &g.admin {
        Some((a, pos)) => Some((a.listen, *pos)),
        None if g.admin_failed => None,
        None => Some((default_admin_listen(), None)),
    };
    for (i, l) in g.listeners.iter().enumerate() {
        let ln = &l.listener;
        if let Some(first) = names.get(ln.name.as_str()) {
            issues.push(
                l.name_pos,
                format!(
                    "duplicate listener name \"{}\" (first at line {})",
                    ln.name, first.line
                ),
            );
        } else {
            names.insert(&ln.name, l.name_pos);
        }
        if let Some(prev) = g.listeners[..i]
            .iter()
            .find(|p| overlaps(p.listener.listen, ln.listen))
        {
            let verb = if prev.listener.listen == ln.listen {
                "already used by".to_string()
            } else {
                format!("overlapping {} of", prev.listener.listen)
            };
            issues.push(
                l.listen_pos,
                format!(
                    "listener \"{}\" uses address {} {verb} listener \"{}\"",
                    ln.name, ln.listen, prev.listener.name
                ),
            );
        }
        if let Some((admin, admin_pos)) = admin_at.filter(|(a, _)| overlaps(*a, ln.listen)) {
            match admin_pos {
                Some(at) => issues.push(
                    at,
                    format!(
                        "admin address {admin} already used by listener \"{}\"",
                        ln.name
                    ),
                ),
                None => issues.push(
                    l.listen_pos,
                    format!(
                        "listener \"{}\" uses address {} already used by the admin port ({admin})",
                        ln.name, ln.listen
                    ),
                ),
            }
        }
        match (&ln.pool, l.pool_pos) {
            (Some(pool), Some(at)) if !pool.is_empty() && !g.pool_names.contains(pool) => issues
                .push(
                    at,
                    format!("unknown pool \"{pool}\" ({})", known(&g.pool_names)),
                ),
            (None, _) if ln.protocol == Protocol::Tcp && ln.sni_routes.is_empty() => issues.push(
                l.pos,
                format!("tcp listener \"{}\" needs a pool (or sni_routes)", ln.name),
            ),
            (None, _) if ln.protocol == Protocol::Tcp => {}
            // A redirect_https listener answers every request itself.
            (None, _) if g.routes_seen == 0 && ln.redirect_https.is_none() => issues.push(
                l.pos,
                format!(
                    "listener \"{}\" has no pool and no routes are defined",
                    ln.name
                ),
            ),
            _ => {}
        }
    }
    for l in &g.listeners {
        for (r, at) in l.listener.sni_routes.iter().zip(&l.sni_pool_pos) {
            if !g.pool_names.contains(&r.pool) {
                issues.push(
                    *at,
                    format!("unknown pool \"{}\" ({})", r.pool, known(&g.pool_names)),
                );
            }
        }
    }
    for r in &g.routes {
        let pool = g.pools.iter().find(|p| p.pool.name == r.route.pool);
        if let (Some(pos), Some(p)) = (r.grpc_web_pos, pool) {
            if p.pool.protocol != super::model::UpstreamProtocol::H2 {
                issues.push(pos, super::pool::GRPC_WEB_NEEDS_H2);
            }
        }
        if !g.pool_names.contains(&r.route.pool) {
            issues.push(
                r.pool_pos,
                format!(
                    "unknown pool \"{}\" ({})",
                    r.route.pool,
                    known(&g.pool_names)
                ),
            );
        }
    }
    let redis = matches!(g.state, Some(super::state::State::Redis(_)));
    for at in g.pools.iter().filter_map(|p| p.redis_list_pos) {
        if !redis {
            issues.push(
                at,
                "target.redis_list reads the shared-state Redis: it needs state.backend: redis",
            );
        }
    }
    port_range_checks(g, issues);
}

/// Autoscale port ranges must not overlap each other nor the listener / admin ports.
fn port_range_checks(g: &Gathered, issues: &mut Issues) {
    let admin = g
        .admin
        .as_ref()
        .map_or(default_admin_listen(), |a| a.0.listen);
    let mut taken: Vec<(u16, String)> = vec![(admin.port(), "the admin port".to_string())];
    for l in &g.listeners {
        let port = l.listener.listen.port();
        taken.push((port, format!("listener \"{}\"", l.listener.name)));
    }
    let mut ranges: Vec<(&str, (u16, u16))> = Vec::new();
    for p in &g.pools {
        let (Some(a), Some(at)) = (&p.pool.autoscale, p.ports_pos) else {
            continue;
        };
        // provider command: no local ports
        let Some((lo, hi)) = a.provider.ports() else {
            continue;
        };
        if let Some((other, (olo, ohi))) = ranges
            .iter()
            .find(|(_, (olo, ohi))| lo <= *ohi && *olo <= hi)
        {
            issues.push(
                at,
                format!(
                    "autoscale ports {lo}-{hi} of pool \"{}\" overlap ports {olo}-{ohi} of pool \"{other}\"",
                    p.pool.name
                ),
            );
        }
        if let Some((port, who)) = taken.iter().find(|(port, _)| (lo..=hi).contains(port)) {
            issues.push(
                at,
                format!(
                    "autoscale ports {lo}-{hi} of pool \"{}\" include port {port} of {who}",
                    p.pool.name
                ),
            );
        }
        ranges.push((&p.pool.name, (lo, hi)));
    }
}
