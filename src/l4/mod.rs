//! L4: `protocol: tcp` listeners proxy raw TCP to a pool (its balancer, health, connect and
//! idle timeouts, per-backend `max_connections`), with PROXY protocol v1/v2 in
//! (`accept_proxy`) and out (`send_proxy`), and TLS passthrough routed on the ClientHello's
//! server name (`sni_routes`). Bytes move with `splice(2)` between the two sockets (they
//! never enter userspace; `AUTOLB_L4_SPLICE=off` copies them instead).

mod pump;
pub mod sni;
mod splice;
mod stats;

use crate::proxy_proto;
use crate::proxy_proto::client_addrs::{client_addrs, Refused, HEADER_TIMEOUT};
pub use crate::proxy_proto::ProxyAddrs;
pub use stats::{annotate_status, render_metrics};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balance::{ring::hash_bytes, PickContext};
use crate::config::{self, Algorithm, SniRoute};
use crate::health::outlier::{self, Outcome};
use crate::runtime::{Backend, Pool, Runtime};

/// The route for `sni`: an exact name first, else the longest matching wildcard.
pub fn route<'a>(routes: &'a [SniRoute], sni: &str) -> Option<&'a SniRoute> {
    routes
        .iter()
        .find(|r| !r.name.starts_with("*.") && r.matches(sni))
        .or_else(|| {
            routes
                .iter()
                .filter(|r| r.name.starts_with("*.") && r.matches(sni))
                .max_by_key(|r| r.name.len())
        })
}

/// Serve one connection of the tcp listener `listener`; `_guard` counts it open.
pub async fn serve<G: Send + 'static>(
    mut stream: TcpStream,
    peer: SocketAddr,
    runtime: Arc<Runtime>,
    listener: Arc<str>,
    _guard: G,
) {
    let _ = stream.set_nodelay(true);
    let snap = runtime.snapshot();
    // Runtime listeners are the config's, in order.
    let position = snap.listener(&listener);
    let Some(cfg) = position.and_then(|i| snap.config.listeners.get(i)) else {
        return;
    };
    let Some(counters) = position.and_then(|i| Some(snap.listeners.get(i)?.tcp.clone())) else {
        return;
    };
    // The connection's own address only for a PROXY header we may send (a `getsockname`).
    let addrs = match client_addrs(
        cfg.accept_proxy,
        snap.any_send_proxy,
        &listener,
        &mut stream,
        peer,
    )
    .await
    {
        Ok(addrs) => addrs,
        Err(Refused::Header) => {
            counters.reject("bad_proxy_header");
            return;
        }
        Err(Refused::Socket) => return,
    };
    let pool_name = if cfg.sni_routes.is_empty() {
        cfg.pool.as_deref()
    } else {
        match sni::peek_server_name(&stream, HEADER_TIMEOUT).await {
            Ok(Some(name)) => match route(&cfg.sni_routes, &name) {
                Some(r) => Some(r.pool.as_str()),
                None => {
                    tracing::debug!(listener = %listener, client = %addrs.src, sni = %name, "no sni_routes entry: default pool");
                    cfg.pool.as_deref()
                }
            },
            Ok(None) => cfg.pool.as_deref(),
            Err(sni::SniError::Read(e)) => {
                tracing::debug!(listener = %listener, client = %addrs.src, error = %e, "no ClientHello: connection closed");
                counters.reject("no_client_hello");
                return;
            }
            Err(e) => {
                tracing::info!(listener = %listener, client = %addrs.src, error = %e, "unreadable ClientHello: default pool");
                cfg.pool.as_deref()
            }
        }
    };
    let position = pool_name.and_then(|n| snap.pool_position(n));
    let Some(pool) = position.and_then(|i| snap.pools.get(i)).cloned() else {
        tracing::info!(listener = %listener, client = %addrs.src, "no pool for this connection (unknown or missing SNI, no default pool): closed");
        counters.reject("no_pool");
        return;
    };
    // Runtime pools are the config's, in order.
    let Some(pool_cfg) = position.and_then(|i| snap.config.pools.get(i)) else {
        return;
    };
    let Some((backend, lease)) = connect(&runtime, &pool, pool_cfg, addrs, &listener).await else {
        counters.reject("no_backend");
        return;
    };
    let idle = pool.timeouts.idle;
    let send_proxy = pool_cfg.send_proxy;
    drop(snap);
    let mut backend_stream = backend;
    if let Some(version) = send_proxy {
        let header = proxy_proto::encode(version, Some(addrs));
        let write = tokio::io::AsyncWriteExt::write_all(&mut backend_stream, &header);
        if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
            lease.tcp().errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %listener, backend = %lease.backend.address, "cannot write the PROXY header: connection closed");
            return;
        }
    }
    let started = Instant::now();
    let meters = pump::Meters {
        upstream: &[&counters.bytes_in, &lease.tcp().bytes_in],
        downstream: &[&counters.bytes_out, &lease.tcp().bytes_out],
    };
    let result = pump::pump(stream, backend_stream, idle, meters, runtime.l4_splice).await;
    match &result {
        Ok(()) => {}
        Err(e @ pump::PumpError::Backend(_)) => {
            lease.tcp().errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(listener = %listener, pool = %pool.name, backend = %lease.backend.address, error = %e, "tcp connection broken by the backend");
        }
        Err(e) => {
            tracing::debug!(listener = %listener, client = %addrs.src, error = %e, "tcp connection ended")
        }
    }
    tracing::debug!(
        listener = %listener,
        client = %addrs.src,
        backend = %lease.backend.address,
        secs = started.elapsed().as_secs_f64(),
        "tcp connection closed"
    );
}

/// A backend's slot, held while a connection to it is open (least_conn counts it).
struct Lease {
    backend: Arc<Backend>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Take a slot on `pool.backends[idx]` unless it is at `max`.
    fn take(pool: &Arc<Pool>, idx: usize, max: Option<u32>) -> Option<Lease> {
        let backend = pool.backends.get(idx)?.clone();
        let prev = backend.stats.begin();
        if max.is_some_and(|m| prev >= u64::from(m)) {
            backend.stats.end();
            return None;
        }
        pool.stats.active.fetch_add(1, Ordering::Relaxed);
        backend.stats.tcp.open.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            backend,
            pool: pool.clone(),
        })
    }
}

impl Lease {
    /// The TCP counters of the backend this slot is on.
    fn tcp(&self) -> &crate::backend::tcp_counters::TcpBackendCounters {
        &self.backend.stats.tcp
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.stats.end();
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.stats.tcp.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend with room, by the pool's balancer; full ones are skipped.
fn pick(pool: &Arc<Pool>, limits: &[Option<u32>], ctx: &mut PickContext) -> Option<(usize, Lease)> {
    let n = pool.backends.len();
    for _ in 0..=n {
        let idx = pool.balancer.pick(&pool.backends, ctx)?;
        if let Some(lease) = Lease::take(pool, idx, limits.get(idx).copied().flatten()) {
            return Some((idx, lease));
        }
        if idx >= 64 {
            break; // cannot be excluded from the balancer: scan below
        }
        ctx.exclude |= 1 << idx;
    }
    (0..n)
        .filter(|&i| i >= 64 || ctx.exclude & (1 << i) == 0)
        .filter(|&i| {
            let b = &pool.backends[i];
            if ctx.panic {
                b.accepts_new()
            } else {
                b.usable()
            }
        })
        .find_map(|i| Some((i, Lease::take(pool, i, limits.get(i).copied().flatten())?)))
}

/// Connect to a backend of `pool`: a connect failure (nothing was sent) tries another one,
/// up to the pool's `retries`.
async fn connect(
    runtime: &Runtime,
    pool: &Arc<Pool>,
    cfg: &config::Pool,
    addrs: ProxyAddrs,
    listener: &str,
) -> Option<(TcpStream, Lease)> {
    // Per-backend `max_connections`, by the runtime backend's position; none set (the
    // usual case): empty, nothing allocated.
    let limits: Vec<Option<u32>> = if cfg.backends.iter().any(|c| c.max_connections.is_some()) {
        pool.backends
            .iter()
            .map(|b| {
                cfg.backends
                    .iter()
                    .find(|c| c.address == b.address)
                    .and_then(|c| c.max_connections)
            })
            .collect()
    } else {
        Vec::new()
    };
    let hash = (pool.algorithm == Algorithm::ConsistentHash).then(|| {
        match addrs.src.ip().to_canonical() {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }
    });
    let mut ctx = PickContext {
        hash,
        exclude: 0,
        panic: pool.in_panic(),
    };
    let timeout = pool.timeouts.connect;
    for attempt in 0..=pool.retries {
        let Some((idx, lease)) = pick(pool, &limits, &mut ctx) else {
            let full = pool.backends.iter().zip(&limits).any(|(b, l)| {
                b.usable()
                    && l.is_some_and(|m| b.stats.active.load(Ordering::Relaxed) >= u64::from(m))
            });
            let why = if full {
                "every usable backend is at max_connections"
            } else {
                "no usable backend"
            };
            tracing::warn!(listener = %listener, pool = %pool.name, client = %addrs.src, "{why}: connection closed");
            return None;
        };
        if idx < 64 {
            ctx.exclude |= 1 << idx;
        }
        let backend = lease.backend.clone();
        let result = tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await;
        let error = match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                lease
                    .backend
                    .stats
                    .tcp
                    .total
                    .fetch_add(1, Ordering::Relaxed);
                outlier::observe(pool, &backend, Outcome::Success, &runtime.events);
                return Some((stream, lease));
            }
            Ok(Err(e)) => {
                outlier::observe(pool, &backend, Outcome::ConnectFailure, &runtime.events);
                e.to_string()
            }
            Err(_) => {
                outlier::observe(pool, &backend, Outcome::Timeout, &runtime.events);
                format!("timed out after {timeout:?}")
            }
        };
        backend.stats.record_failure();
        lease
            .backend
            .stats
            .tcp
            .errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %listener, pool = %pool.name, backend = %backend.address, attempt = attempt + 1, error = %error, "tcp connect failed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sni_routes_win_over_wildcards() {
        let r = |n: &str, p: &str| SniRoute {
            name: n.into(),
            pool: p.into(),
        };
        let routes = vec![
            r("*.example.com", "wild"),
            r("*.db.example.com", "dbwild"),
            r("api.example.com", "api"),
        ];
        let pick = |s: &str| route(&routes, s).map(|r| r.pool.as_str());
        assert_eq!(pick("api.example.com"), Some("api"));
        assert_eq!(pick("x.example.com"), Some("wild"));
        assert_eq!(pick("a.db.example.com"), Some("dbwild"));
        assert_eq!(pick("example.org"), None);
    }
}
