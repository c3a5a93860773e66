//! The running balancer: worker runtimes, listeners bound on each, the admin listener,
//! connection accounting and graceful drain on shutdown.

mod conn;
mod listener;
mod worker;

pub use listener::{bind_reuseport, ListenerStats};
pub use worker::{worker_id, WorkerModel, Workers};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Protocol};
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name:?}: protocol {protocol:?} is not supported yet")]
    Unsupported { name: String, protocol: Protocol },
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
}

/// A started autolb: owns the workers and knows where everything listens.
pub struct Server {
    pub runtime: Arc<Runtime>,
    /// Listener name -> bound address (the real port when the config said 0).
    pub listeners: BTreeMap<String, SocketAddr>,
    pub admin_addr: SocketAddr,
    pub listener_stats: Arc<BTreeMap<String, Arc<ListenerStats>>>,
    workers: Workers,
    shutdown: watch::Sender<bool>,
}

impl Server {
    /// Bind every listener and the admin port, start the workers. Must run inside a tokio
    /// runtime: the admin API is served on it.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let threads = config.threads.max(1);
        let model = WorkerModel::from_env();
        let runtime = Runtime::new(config, threads);
        let snapshot = runtime.snapshot();
        for pool in &snapshot.config.pools {
            let pending: Vec<&str> = [
                ("autoscale", pool.autoscale.is_some()),
                ("sticky", pool.sticky.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !pending.is_empty() {
                tracing::warn!(
                    pool = %pool.name,
                    settings = ?pending,
                    "these settings are validated but not acted on by this version yet"
                );
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(false);

        // Bind everything first: a bad address fails the start before any thread exists.
        let sockets_per_listener = match model {
            WorkerModel::PerCore => threads,
            WorkerModel::Shared => 1,
        };
        let mut bound = Vec::new();
        for l in &snapshot.config.listeners {
            if l.protocol != Protocol::Http {
                return Err(ServerError::Unsupported {
                    name: l.name.clone(),
                    protocol: l.protocol,
                });
            }
            let sockets = bind_reuseport(l.listen, sockets_per_listener).map_err(|source| {
                ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                }
            })?;
            bound.push((l.name.clone(), sockets));
        }
        let admin_listener = tokio::net::TcpListener::bind(snapshot.config.admin.listen)
            .await
            .map_err(|source| ServerError::AdminBind {
                addr: snapshot.config.admin.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| ServerError::AdminBind {
                addr: snapshot.config.admin.listen,
                source,
            })?;

        let workers = Workers::start(model, threads).map_err(ServerError::Workers)?;
        let mut listeners = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (name, sockets) in bound {
            let st = Arc::new(ListenerStats::default());
            if let Some(first) = sockets.first() {
                if let Ok(addr) = first.local_addr() {
                    tracing::info!(listener = %name, addr = %addr, "listening");
                    listeners.insert(name.clone(), addr);
                }
            }
            for (i, socket) in sockets.into_iter().enumerate() {
                let handle = &workers.handles[i % workers.handles.len()];
                handle.spawn(listener::accept_loop(
                    socket,
                    listener::AcceptContext {
                        name: name.clone(),
                        runtime: runtime.clone(),
                        stats: st.clone(),
                        shutdown: shutdown_rx.clone(),
                    },
                ));
            }
            stats.insert(name, st);
        }
        let listener_stats = Arc::new(stats);
        runtime.start_health_checks();
        tracing::info!(addr = %admin_addr, "admin listening");
        tokio::spawn(crate::admin::serve(
            admin_listener,
            crate::admin::AdminState {
                runtime: runtime.clone(),
                listeners: listener_stats.clone(),
            },
            shutdown_rx,
        ));
        tracing::info!(
            threads,
            model = ?model,
            pools = snapshot.pools.len(),
            "autolb started"
        );
        Ok(Server {
            runtime,
            listeners,
            admin_addr,
            listener_stats,
            workers,
            shutdown,
        })
    }

    /// Open client connections over all listeners.
    pub fn open_connections(&self) -> i64 {
        self.listener_stats
            .values()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Stop accepting (new connections are refused), answer in-flight requests with
    /// `Connection: close`, let them finish for up to `grace`, then stop the workers.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.runtime.health.stop();
        tracing::info!(
            connections = self.open_connections(),
            grace = ?grace,
            "draining: no longer accepting"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.open_connections();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown grace period over: closing the connections still open"
            );
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        tracing::info!("autolb stopped");
    }
}
