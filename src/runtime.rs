//! The one `Snapshot` behind `ArcSwap`: listeners, routes and pools, built and validated whole,
//! swapped once. The hot path only reads it; `Runtime::apply` is the only writer.

pub mod access_queue;
pub mod alert_queue;
pub mod events;
pub mod ip_limiter;
pub mod limit;
pub mod overrides;
mod pool;
mod routes;
pub mod stats;
pub mod tcp_stats;
pub mod tunnels;

pub use crate::backend::{Backend, BackendMode, BackendStats, CheckReport};
pub use overrides::{OverrideError, Overrides};
pub use pool::{default_instance_check, ManagedBackend, Pool, PoolStats, RETRY_REASONS};
pub use routes::{Route, Routes};
pub use stats::{LatencyWindow, WindowSummary};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::{Config, Protocol};
use crate::runtime::events::EventLog;
use crate::uri::Normalizer;
use ip_limiter::IpLimiter;

/// What the data plane needs to know about a listener per request.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub protocol: Protocol,
    /// Fallback pool when no route matches.
    pub pool: Option<usize>,
    pub trusted_proxies: Vec<IpNet>,
    pub idle_timeout: Duration,
    /// `normalize:` and its counters (carried over reloads by listener name).
    pub normalize: Normalizer,
    /// The per-client-IP `rate_limit:`, shared by the listener's connections and carried
    /// over reloads by listener name while its setting stays the same.
    pub rate_limit: Option<Arc<IpLimiter>>,
    /// `limits:`, shared by the listener's connections.
    pub limits: Arc<crate::config::Limits>,
    /// `h2c: true`: HTTP/2 with prior knowledge on a plain http listener.
    pub h2c: bool,
    /// `accept_proxy: true`: connections start with a PROXY protocol header.
    pub accept_proxy: bool,
    /// A tcp listener's counters (carried over reloads by listener name).
    pub tcp: Arc<tcp_stats::TcpListenerCounters>,
}

impl ListenerInfo {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Where a request went: its pool and the route that chose it (`None`: the listener's
/// pool), as positions in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub pool: usize,
    pub route: Option<usize>,
}

/// Everything the data plane reads, built whole from one `Config`.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: Routes,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<ListenerInfo>,
    /// Config generation: 1 at start, +1 for each reload that changed the config.
    pub generation: u64,
    /// Instance sets the autoscaler published (counted apart from the config).
    pub autoscaler_updates: u64,
    /// Whether any pool or route has `compress` (else requests skip the negotiation).
    pub any_compress: bool,
    /// Whether any pool sends PROXY headers (`send_proxy`): connections then keep their
    /// addresses for their requests.
    pub any_send_proxy: bool,
    /// Listener positions by name (a connection finds its listener without a scan).
    listener_index: HashMap<String, usize>,
    /// Pool positions by name (in `pools`, and in `config.pools`: the same order).
    pool_index: HashMap<String, usize>,
    /// Backend states and weights set through the admin API.
    pub backend_state_changes: u64,
    /// The runtime's access log queue (a request's log line goes there when it ends).
    pub access_log: Arc<access_queue::AccessQueue>,
}

/// What the snapshot is built from; only the apply step holds it.
#[derive(Debug)]
pub struct Inputs {
    pub config: Arc<Config>,
    /// Autoscaled instances per pool, as the autoscaler last published them.
    pub managed: HashMap<String, Vec<ManagedBackend>>,
    /// The operator's backend states and weights.
    pub overrides: Overrides,
    pub generation: u64,
    pub autoscaler_updates: u64,
    pub backend_state_changes: u64,
    /// The runtime's access log queue, handed to every snapshot.
    pub access_log: Arc<access_queue::AccessQueue>,
}

impl Inputs {
    pub fn new(config: Config) -> Inputs {
        Inputs {
            config: Arc::new(config),
            managed: HashMap::new(),
            overrides: Overrides::default(),
            generation: 1,
            autoscaler_updates: 0,
            backend_state_changes: 0,
            access_log: Arc::default(),
        }
    }
}

impl Snapshot {
    /// Build a snapshot from `inputs`, carrying over per-backend state (counters, EWMA,
    /// idle connections) and per-pool statistics from `previous` where names match.
    pub fn build(inputs: &Inputs, previous: Option<&Snapshot>, workers: usize) -> Snapshot {
        let config = inputs.config.clone();
        let pool_index: HashMap<&str, usize> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|pc| {
                let prev = previous.and_then(|s| s.pool(&pc.name));
                let instances = inputs
                    .managed
                    .get(&pc.name)
                    .map_or(&[][..], |v| v.as_slice());
                Arc::new(Pool::build(
                    pc,
                    instances,
                    &inputs.overrides,
                    prev.map(|p| p.as_ref()),
                    workers,
                ))
            })
            .collect();
        // Config validation guarantees every named pool exists; a miss is skipped, not a panic.
        let previous_routes = previous.map(Snapshot::routes_by_key).unwrap_or_default();
        let routes = Routes::new(
            config
                .routes
                .iter()
                .filter_map(|r| {
                    let prev = previous_routes.get(&Route::limiter_key(r)).copied();
                    Some(Route::from_config(
                        r,
                        *pool_index.get(r.pool.as_str())?,
                        prev,
                    ))
                })
                .collect(),
        );
        let listeners: Vec<ListenerInfo> = config
            .listeners
            .iter()
            .map(|l| {
                let before = previous
                    .and_then(|s| s.listener(&l.name))
                    .and_then(|i| previous?.listeners.get(i));
                ListenerInfo {
                    name: l.name.clone(),
                    protocol: l.protocol,
                    pool: l.pool.as_deref().and_then(|p| pool_index.get(p).copied()),
                    trusted_proxies: l.trusted_proxies.clone(),
                    idle_timeout: l.idle_timeout,
                    normalize: Normalizer {
                        policy: l.normalize,
                        counters: before
                            .map(|p| p.normalize.counters.clone())
                            .unwrap_or_default(),
                    },
                    rate_limit: l
                        .rate_limit
                        .as_ref()
                        .map(|r| IpLimiter::carried(before.and_then(|p| p.rate_limit.as_ref()), r)),
                    limits: Arc::new(l.limits.clone()),
                    h2c: l.h2c,
                    accept_proxy: l.accept_proxy,
                    tcp: before.map(|p| p.tcp.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let any_compress = pools.iter().any(|p: &Arc<Pool>| p.compress.is_some())
            || routes.iter().any(|r| r.compress.is_some());
        let listener_index = listeners
            .iter()
            .enumerate()
            .map(|(i, l): (usize, &ListenerInfo)| (l.name.clone(), i))
            .collect();
        let pools_by_name = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Snapshot {
            pool_index: pools_by_name,
            any_compress,
            any_send_proxy: config.pools.iter().any(|p| p.send_proxy.is_some()),
            listener_index,
            config,
            routes,
            pools,
            listeners,
            generation: inputs.generation,
            autoscaler_updates: inputs.autoscaler_updates,
            backend_state_changes: inputs.backend_state_changes,
            access_log: inputs.access_log.clone(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(self.pool_position(name)?)
    }

    /// Where the pool `name` is in `pools` (and in `config.pools`).
    pub fn pool_position(&self, name: &str) -> Option<usize> {
        self.pool_index.get(name).copied()
    }

    /// Every HTTP cache of this snapshot (pools' and routes'), with its pool's name.
    pub fn caches(&self) -> impl Iterator<Item = (&str, &Arc<crate::cache::Cache>)> {
        let pools = self
            .pools
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.cache.as_ref()?)));
        let routes = self.routes.iter().filter_map(|r| {
            let pool = self.pools.get(r.pool)?;
            Some((pool.name.as_str(), r.cache.as_ref()?))
        });
        pools.chain(routes)
    }

    /// This snapshot's routes by what identifies them across reloads (the first of equal
    /// ones), so a reload to N routes finds each one's predecessor in O(1), not O(N).
    fn routes_by_key(&self) -> HashMap<String, &Route> {
        // Runtime routes are the config's, in order (all of them, as validated).
        if self.routes.len() != self.config.routes.len() {
            return HashMap::new();
        }
        let mut by_key = HashMap::with_capacity(self.routes.len());
        for (config, route) in self.config.routes.iter().zip(self.routes.iter()) {
            by_key.entry(Route::limiter_key(config)).or_insert(route);
        }
        by_key
    }

    pub fn listener(&self, name: &str) -> Option<usize> {
        self.listener_index.get(name).copied()
    }

    /// The pool for a request: the first matching route, else the listener's pool.
    pub fn select_pool(&self, listener: usize, host: &str, path: &str) -> Option<usize> {
        self.select(listener, host, path).map(|(pool, _)| pool)
    }

    /// The pool for a request and the route that chose it (`None`: the listener's pool).
    pub fn select(
        &self,
        listener: usize,
        host: &str,
        path: &str,
    ) -> Option<(usize, Option<&Route>)> {
        let chosen = self.choose(listener, host, path)?;
        Some((chosen.pool, chosen.route.and_then(|i| self.routes.get(i))))
    }

    /// Like `select`, by position: what a request's later steps (compression, the access
    /// log) read without matching the routes again.
    pub fn choose(&self, listener: usize, host: &str, path: &str) -> Option<Chosen> {
        match self.routes.first_match(host, path) {
            Some(i) => Some(Chosen {
                pool: self.routes.get(i)?.pool,
                route: Some(i),
            }),
            None => Some(Chosen {
                pool: self.listeners.get(listener)?.pool?,
                route: None,
            }),
        }
    }

    /// The `compress` settings of a request routed as `chosen`: its route's, else its
    /// pool's.
    pub fn compress(&self, chosen: Chosen) -> Option<&crate::config::Compress> {
        let route = chosen.route.and_then(|i| self.routes.get(i));
        route
            .and_then(|r| r.compress.as_ref())
            .or_else(|| self.pools.get(chosen.pool)?.compress.as_ref())
    }
}

/// Owner of the live snapshot and process-wide facts (start time, worker count).
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Serialises writers (reload, autoscaler); never touched by the data plane.
    inputs: Mutex<Inputs>,
    pub workers: usize,
    pub started: std::time::Instant,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Recent health events (down, up, ejected, lifted).
    pub events: Arc<EventLog>,
    /// Told of every snapshot swapped in (the server's active health checks).
    swap_observer: std::sync::OnceLock<Arc<dyn SwapObserver>>,
    /// Peak requests per second since start (read by the admin API).
    pub peaks: stats::Peaks,
    /// The server's WebSocket tunnels (counted, and closed at shutdown).
    pub tunnels: Arc<tunnels::Tunnels>,
    /// Alerts on their way to `alerts`' sender.
    pub alerts: Arc<alert_queue::AlertQueue>,
    /// L4 connections move their bytes with `splice(2)` (`AUTOLB_L4_SPLICE=off`: copied,
    /// for comparisons).
    pub l4_splice: bool,
}

impl Runtime {
    pub fn new(config: Config, workers: usize) -> Arc<Runtime> {
        let inputs = Inputs::new(config);
        let snapshot = Snapshot::build(&inputs, None, workers);
        Arc::new(Runtime {
            current: ArcSwap::from_pointee(snapshot),
            inputs: Mutex::new(inputs),
            workers,
            started: std::time::Instant::now(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            events: Arc::default(),
            swap_observer: std::sync::OnceLock::new(),
            peaks: stats::Peaks::default(),
            tunnels: Arc::default(),
            alerts: Arc::default(),
            l4_splice: !matches!(
                std::env::var("AUTOLB_L4_SPLICE").as_deref(),
                Ok("off" | "0" | "false")
            ),
        })
    }

    /// The live snapshot (one reference-count increment).
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swap in a new config: the whole snapshot is rebuilt and swapped once; the config
    /// generation counts it when the config differs. With the server's health checks
    /// observing (`observe_swaps`), it must run inside a tokio runtime: they restart.
    pub fn apply(&self, config: Config) -> Arc<Snapshot> {
        let next = self.rebuild(|inputs| {
            if *inputs.config != config {
                inputs.generation += 1;
            }
            inputs.config = Arc::new(config);
            Ok::<_, std::convert::Infallible>(())
        });
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        next.unwrap_or_else(|never| match never {})
    }

    /// Publish the autoscaler's current instances of `pool` (starting, ready and draining
    /// ones: the balancer only picks the usable).
    pub fn set_managed(&self, pool: &str, instances: Vec<ManagedBackend>) -> Arc<Snapshot> {
        let next = self.rebuild(|inputs| {
            inputs.managed.insert(pool.to_string(), instances);
            inputs.autoscaler_updates += 1;
            Ok::<_, std::convert::Infallible>(())
        });
        next.unwrap_or_else(|never| match never {})
    }

    /// The operator's `set server`: `backend` of `pool` goes to `mode`, and to `weight`
    /// when given (its configured weight ends the override). Leaving `maint` in a checked
    /// pool makes the backend pass one check first (checked at once: its health is stale).
    pub fn set_backend_state(
        &self,
        pool: &str,
        backend: &str,
        mode: BackendMode,
        weight: Option<u64>,
    ) -> Result<Arc<Snapshot>, OverrideError> {
        self.rebuild(|inputs| {
            let (config, managed) = (inputs.config.clone(), &inputs.managed);
            let was = inputs
                .overrides
                .set(&config, managed, pool, backend, mode, weight)?;
            if was.mode == BackendMode::Maint && mode != BackendMode::Maint {
                let snap = self.current.load();
                let p = snap.pool(pool);
                if let Some(b) = p
                    .filter(|p| p.health_check.is_some())
                    .and_then(|p| p.backends.iter().find(|b| b.address == backend))
                {
                    b.stats.check_successes.store(0, Ordering::Relaxed);
                    b.stats.check_failures.store(0, Ordering::Relaxed);
                    b.stats.awaiting_first_check.store(true, Ordering::Relaxed);
                    b.stats.up.store(false, Ordering::Relaxed);
                }
            }
            inputs.backend_state_changes += 1;
            Ok(())
        })
    }

    /// The one apply step: change the inputs (or refuse), build the whole snapshot, swap it.
    fn rebuild<E>(
        &self,
        change: impl FnOnce(&mut Inputs) -> Result<(), E>,
    ) -> Result<Arc<Snapshot>, E> {
        let mut inputs = match self.inputs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut inputs)?;
        let inputs = &mut *inputs;
        for dropped in inputs.overrides.prune(&inputs.config, &inputs.managed) {
            tracing::info!("{dropped}");
        }
        let old = self.current.load_full();
        let next = Arc::new(Snapshot::build(inputs, Some(&old), self.workers));
        self.current.store(next.clone());
        if let Some(observer) = self.swap_observer.get() {
            observer.swapped(&next);
        }
        Ok(next)
    }

    /// Tell `observer` of the current snapshot now and of every one swapped in after it
    /// (one observer: the server's health checks). A second call is ignored.
    pub fn observe_swaps(&self, observer: Arc<dyn SwapObserver>) {
        // Under the writers' lock: no swap slips between the first call and the registration.
        let _inputs = match self.inputs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        observer.swapped(&self.current.load());
        let _ = self.swap_observer.set(observer);
    }
}

/// Told of each snapshot the runtime swaps in, right after the swap, on the writer's
/// thread (inside a tokio runtime when the writer is).
pub trait SwapObserver: Send + Sync {
    fn swapped(&self, snapshot: &Snapshot);
}
