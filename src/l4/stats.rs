//! TCP counters: bytes per listener and direction, and per pool backend the open and total
//! connections, bytes and errors; rendered into `/metrics` and `/loadbalancer/status`.
//! Kept by name in a registry, so they survive reloads like the backends' own state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use serde_json::{json, Value};

use crate::config::Protocol;
use crate::prom::label;
use crate::runtime::Snapshot;

/// One tcp listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Bytes from clients (to backends).
    pub bytes_in: AtomicU64,
    /// Bytes to clients (from backends).
    pub bytes_out: AtomicU64,
    /// Connections closed before reaching a backend, by reason.
    pub rejected: RwLock<BTreeMap<&'static str, u64>>,
}

impl ListenerCounters {
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.write() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

/// One backend of a pool, as TCP connections use it.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub open: AtomicU64,
    pub total: AtomicU64,
    /// Client -> backend.
    pub bytes_in: AtomicU64,
    /// Backend -> client.
    pub bytes_out: AtomicU64,
    /// Connect failures and connections the backend broke.
    pub errors: AtomicU64,
}

type Registry<K, V> = LazyLock<RwLock<BTreeMap<K, Arc<V>>>>;

static LISTENERS: Registry<String, ListenerCounters> = LazyLock::new(Default::default);
static BACKENDS: Registry<(String, String), BackendCounters> = LazyLock::new(Default::default);

fn get_or_insert<K: Ord + Clone, V: Default>(reg: &RwLock<BTreeMap<K, Arc<V>>>, key: &K) -> Arc<V> {
    if let Some(v) = reg.read().ok().and_then(|m| m.get(key).cloned()) {
        return v;
    }
    match reg.write() {
        Ok(mut m) => m.entry(key.clone()).or_default().clone(),
        Err(_) => Arc::default(),
    }
}

fn lookup<K: Ord, V>(reg: &RwLock<BTreeMap<K, Arc<V>>>, key: &K) -> Option<Arc<V>> {
    reg.read().ok().and_then(|m| m.get(key).cloned())
}

pub fn listener(name: &str) -> Arc<ListenerCounters> {
    get_or_insert(&LISTENERS, &name.to_string())
}

pub fn backend(pool: &str, address: &str) -> Arc<BackendCounters> {
    get_or_insert(&BACKENDS, &(pool.to_string(), address.to_string()))
}

/// The tcp listeners' names and the pools they send to.
fn tcp_uses(snap: &Snapshot) -> (Vec<&str>, BTreeSet<&str>) {
    let mut listeners = Vec::new();
    let mut pools = BTreeSet::new();
    for l in snap
        .config
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Tcp)
    {
        listeners.push(l.name.as_str());
        pools.extend(l.pool.as_deref());
        pools.extend(l.sni_routes.iter().map(|r| r.pool.as_str()));
    }
    (listeners, pools)
}

/// The `autolb_tcp_*` metrics of the tcp listeners and pools of `snap`.
pub fn render_metrics(out: &mut String, snap: &Snapshot) {
    let (listeners, pools) = tcp_uses(snap);
    let _ = writeln!(out, "# HELP autolb_tcp_bytes_total Bytes proxied by tcp listeners (in: from clients, out: to clients).\n# TYPE autolb_tcp_bytes_total counter");
    for name in &listeners {
        let c = lookup(&LISTENERS, &name.to_string()).unwrap_or_default();
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
    for name in &listeners {
        let Some(c) = lookup(&LISTENERS, &name.to_string()) else {
            continue;
        };
        let reasons = c.rejected.read().map(|m| m.clone()).unwrap_or_default();
        for (reason, n) in reasons {
            let _ = writeln!(
                out,
                "autolb_tcp_rejected_total{{listener=\"{}\",reason=\"{reason}\"}} {n}",
                label(name)
            );
        }
    }
    let rows: Vec<(String, String, Arc<BackendCounters>)> = snap
        .pools
        .iter()
        .filter(|p| pools.contains(p.name.as_str()))
        .flat_map(|p| {
            p.backends.iter().map(|b| {
                let key = (p.name.clone(), b.address.clone());
                let c = lookup(&BACKENDS, &key).unwrap_or_default();
                (label(&p.name), label(&b.address), c)
            })
        })
        .collect();
    type Pick = fn(&BackendCounters) -> &AtomicU64;
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
        if !tcp_listeners.contains(&name.as_str()) {
            continue;
        }
        let c = lookup(&LISTENERS, &name).unwrap_or_default();
        let rejected = c.rejected.read().map(|m| m.clone()).unwrap_or_default();
        l["tcp"] = json!({
            "bytes_in": c.bytes_in.load(Ordering::Relaxed),
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
            "rejected": rejected,
        });
    }
    for p in pools.iter_mut() {
        let Some(pool) = p["name"].as_str().map(str::to_string) else {
            continue;
        };
        if !tcp_pools.contains(pool.as_str()) {
            continue;
        }
        let mut sum = [0u64; 5];
        if let Some(backends) = p["backends"].as_array_mut() {
            for b in backends {
                let Some(addr) = b["address"].as_str().map(str::to_string) else {
                    continue;
                };
                let c = lookup(&BACKENDS, &(pool.clone(), addr)).unwrap_or_default();
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
