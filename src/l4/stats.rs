//! TCP counters rendered into `/metrics` and `/loadbalancer/status`: bytes per listener and
//! direction, and per pool backend the open and total connections, bytes and errors. The
//! counters themselves live in the snapshot (`runtime::tcp_stats`).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::backend::tcp_counters::TcpBackendCounters;
use crate::config::Protocol;
use crate::prom::label;
use crate::runtime::tcp_stats::TcpListenerCounters;
use crate::runtime::Snapshot;

/// The tcp listeners (name, counters) and the pools they send to.
fn tcp_uses(snap: &Snapshot) -> (Vec<(&str, &TcpListenerCounters)>, BTreeSet<&str>) {
    let mut listeners = Vec::new();
    let mut pools = BTreeSet::new();
    // Runtime listeners are the config's, in order.
    for (l, info) in snap
        .config
        .listeners
        .iter()
        .zip(&snap.listeners)
        .filter(|(l, _)| l.protocol == Protocol::Tcp)
    {
        listeners.push((l.name.as_str(), &*info.tcp));
        pools.extend(l.pool.as_deref());
        pools.extend(l.sni_routes.iter().map(|r| r.pool.as_str()));
    }
    (listeners, pools)
}

/// The `autolb_tcp_*` metrics of the tcp listeners and pools of `snap`.
pub fn render_metrics(out: &mut String, snap: &Snapshot) {
    let (listeners, pools) = tcp_uses(snap);
    let _ = writeln!(out, "# HELP autolb_tcp_bytes_total Bytes proxied by tcp listeners (in: from clients, out: to clients).\n# TYPE autolb_tcp_bytes_total counter");
    for (name, c) in &listeners {
        for (dir, v) in [("in", &c.bytes_in), ("out", &c.bytes_out)] {
            let _ = writeln!(
                out,
                "autolb_tcp_bytes_total{{listener=\"{}\",direction=\"{dir}\"}} {}",
                label(name),
                v.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# HELP autolb_tcp_rejected_total Connections of tcp listeners closed before reaching a backend, by reason.\n# TYPE autolb_tcp_rejected_total counter");
    for (name, c) in &listeners {
        for (reason, n) in c.rejections() {
            let _ = writeln!(
                out,
                "autolb_tcp_rejected_total{{listener=\"{}\",reason=\"{reason}\"}} {n}",
                label(name)
            );
        }
    }
    let rows: Vec<(String, String, &TcpBackendCounters)> = snap
        .pools
        .iter()
        .filter(|p| pools.contains(p.name.as_str()))
        .flat_map(|p| {
            p.backends
                .iter()
                .map(|b| (label(&p.name), label(&b.address), &b.stats.tcp))
        })
        .collect();
    type Pick = fn(&TcpBackendCounters) -> &AtomicU64;
    let series: [(&str, &str, &str, Pick); 3] = [
        (
            "tcp_connections",
            "gauge",
            "Open TCP connections to the backend.",
            |c| &c.open,
        ),
        (
            "tcp_connections_total",
            "counter",
            "TCP connections made to the backend.",
            |c| &c.total,
        ),
        (
            "tcp_errors_total",
            "counter",
            "TCP connect failures and connections broken by the backend.",
            |c| &c.errors,
        ),
    ];
    let _ = writeln!(out, "# HELP autolb_tcp_backend_bytes_total Bytes proxied to (in) and from (out) the backend by tcp listeners.\n# TYPE autolb_tcp_backend_bytes_total counter");
    for (p, b, c) in &rows {
        for (dir, v) in [("in", &c.bytes_in), ("out", &c.bytes_out)] {
            let _ = writeln!(
                out,
                "autolb_tcp_backend_bytes_total{{pool=\"{p}\",backend=\"{b}\",direction=\"{dir}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
    for (name, kind, help, pick) in series {
        let _ = writeln!(
            out,
            "# HELP autolb_{name} {help}\n# TYPE autolb_{name} {kind}"
        );
        for (p, b, c) in &rows {
            let _ = writeln!(
                out,
                "autolb_{name}{{pool=\"{p}\",backend=\"{b}\"}} {}",
                pick(c).load(Ordering::Relaxed)
            );
        }
    }
}

/// Adds a `tcp` object to the pools (and their backends) of a `/loadbalancer/status`
/// document that tcp listeners use, and the byte counts to its tcp listeners.
pub fn annotate_status(snap: &Snapshot, pools: &mut [Value], listeners: &mut [Value]) {
    let (tcp_listeners, tcp_pools) = tcp_uses(snap);
    for l in listeners.iter_mut() {
        let Some(name) = l["name"].as_str().map(str::to_string) else {
            continue;
        };
        let Some((_, c)) = tcp_listeners.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        l["tcp"] = json!({
            "bytes_in": c.bytes_in.load(Ordering::Relaxed),
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
            "rejected": c.rejections(),
        });
    }
    for p in pools.iter_mut() {
        let Some(pool) = p["name"].as_str().and_then(|name| snap.pool(name)) else {
            continue;
        };
        if !tcp_pools.contains(pool.name.as_str()) {
            continue;
        }
        let mut sum = [0u64; 5];
        let by_address: HashMap<&str, &TcpBackendCounters> = pool
            .backends
            .iter()
            .map(|b| (b.address.as_str(), &b.stats.tcp))
            .collect();
        if let Some(backends) = p["backends"].as_array_mut() {
            for b in backends {
                let Some(c) = b["address"].as_str().and_then(|a| by_address.get(a)) else {
                    continue;
                };
                let v = [&c.open, &c.total, &c.bytes_in, &c.bytes_out, &c.errors]
                    .map(|a| a.load(Ordering::Relaxed));
                for (s, x) in sum.iter_mut().zip(v) {
                    *s += x;
                }
                b["tcp"] = counters_json(v);
            }
        }
        p["tcp"] = counters_json(sum);
    }
}

fn counters_json(v: [u64; 5]) -> Value {
    json!({
        "open_connections": v[0],
        "connections_total": v[1],
        "bytes_in": v[2],
        "bytes_out": v[3],
        "errors": v[4],
    })
}
