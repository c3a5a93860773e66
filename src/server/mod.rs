//! The running balancer: worker runtimes, listeners bound on each, the admin listener,
//! connection accounting and graceful drain on shutdown.

mod admission;
mod apply;
mod client_addrs;
mod conn;
mod exclusive;
pub mod framed;
pub mod h1_gate;
mod lazy_tcp;
mod listener;
pub mod listeners;
mod quic;
pub mod reload;
mod trim;
pub mod upgrade;
mod worker;

pub use listener::{bind_reuseport, ListenerStats};
pub use worker::{WorkerModel, Workers};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::autoscale::Autoscaler;
use crate::config::{Config, Protocol};
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // The cause is part of the message and not a `source`: printed with its chain (`{:#}`)
    // it would otherwise appear twice.
    #[error("listener {name:?}: cannot bind {addr}: {reason}")]
    Bind {
        name: String,
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("admin: cannot bind {addr}: {reason}")]
    AdminBind {
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    State(#[from] crate::state::redis::StartError),
    #[error("acme: {0}")]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    Tickets(#[from] crate::tickets::TicketsError),
}

/// How a stopping autolb treats the connections it still has (the value of the shutdown
/// signal every accept loop and connection watches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Drain {
    /// Serving; no drain.
    #[default]
    Serving,
    /// SIGTERM/SIGINT: nobody takes over. In-flight requests finish with
    /// `Connection: close`; idle HTTP/1 connections are closed after a short wait for a
    /// request (as nginx and HAProxy do), so that the stop is prompt.
    Stop,
    /// A successor serves the same sockets (`autolb run --upgrade`): no keep-alive
    /// connection is closed while its client may be sending on it. Each is answered once
    /// more, with `Connection: close`, or closed at its idle deadline, or when the grace
    /// period ends.
    Handover,
}

/// Same listening address, where port 0 in the config matches any port.
fn same_address(configured: SocketAddr, actual: SocketAddr) -> bool {
    configured.ip() == actual.ip() && (configured.port() == 0 || configured.port() == actual.port())
}

/// Bind a listener's sockets (one per worker, SO_REUSEPORT). Unless it says
/// `reuse_port: true`, an address another process listens on is refused, looked for before
/// binding and again once the sockets listen (see `exclusive`).
fn bind_listener(
    l: &crate::config::Listener,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, ServerError> {
    let error = |reason| ServerError::Bind {
        name: l.name.clone(),
        addr: l.listen,
        reason,
    };
    let check = |addr: SocketAddr| -> std::io::Result<()> {
        if l.reuse_port {
            return Ok(());
        }
        match exclusive::foreign_listeners(addr) {
            Ok(found) if found.is_empty() => Ok(()),
            Ok(found) => Err(exclusive::in_use(addr, &found)),
            Err(e) => {
                tracing::warn!(listener = %l.name, error = %e, "cannot read the kernel's socket table: not checking whether another process listens on this address");
                Ok(())
            }
        }
    };
    if l.listen.port() != 0 {
        check(l.listen).map_err(error)?;
    }
    let sockets = bind_reuseport(l.listen, count).map_err(error)?;
    if let Some(addr) = sockets.first().and_then(|s| s.local_addr().ok()) {
        check(addr).map_err(error)?;
    }
    Ok(sockets)
}

/// The admin socket (one, not shared with other processes).
fn bind_admin(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A started autolb: owns the workers and knows where everything listens.
pub struct Server {
    pub runtime: Arc<Runtime>,
    /// The active health checks, restarted on every snapshot swapped in.
    health: Arc<crate::health::HealthChecks>,
    /// The shared-state services (rate limits, learned sessions), handed to connections.
    shared_state: Arc<crate::state::Shared>,
    /// Certificates by ACME (`tls.acme`), when a listener has them.
    acme: Option<Arc<crate::acme::Acme>>,
    /// The https listeners' TLS state: built at start, changed by reloads and file events.
    tls: Arc<crate::tls::Store>,
    /// Listener name -> bound address at start (the real port when the config said 0).
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The listeners serving now (reload adds, moves and removes them).
    pub running: Arc<listeners::Listeners>,
    shutdown_rx: watch::Receiver<Drain>,
    /// The admin socket until the admin API takes it, then the API's accept loop (which
    /// closes the socket when it ends).
    admin: std::sync::Mutex<AdminPort>,
    pub admin_addr: SocketAddr,
    /// OCSP stapling (its metrics are on the admin API).
    ocsp: Arc<crate::ocsp::Ocsp>,
    pub autoscaler: Arc<Autoscaler>,
    /// The running config's hash and the last reload (shown by `/health`).
    pub reload_state: Arc<std::sync::Mutex<reload::ReloadState>>,
    /// Where reload triggers send requests; `reload_requests` is taken by the owner loop.
    pub reload_handle: reload::Handle,
    reload_requests: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<reload::Request>>>,
    _watcher: Option<crate::config::watch::FileWatcher>,
    workers: Workers,
    shutdown: watch::Sender<Drain>,
    /// Stops the admin API (it answers through the drain, `/health/ready` with 503).
    admin_stop: watch::Sender<bool>,
}

/// The admin port of a server: bound at start (so a bad address fails the start), served
/// by whatever `Server::serve_admin` is given (the admin module, a layer above this one).
#[derive(Default)]
struct AdminPort {
    socket: Option<tokio::net::TcpListener>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What every connection of one server is handed: built once at start-up (two servers in
/// one process share nothing).
#[derive(Clone)]
pub(crate) struct Services {
    pub runtime: Arc<Runtime>,
    pub shared: Arc<crate::state::Shared>,
    /// Answers http-01 challenges on the http listeners.
    pub acme: Option<Arc<crate::acme::Acme>>,
    /// The https listeners' TLS state (certificates, session keys).
    pub tls: Arc<crate::tls::Store>,
}

impl Server {
    /// The services its connections are handed.
    pub(crate) fn services(&self) -> Services {
        Services {
            runtime: self.runtime.clone(),
            shared: self.shared_state.clone(),
            acme: self.acme.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Bind every listener and the admin port, start the workers. Must run inside a tokio
    /// runtime: its background tasks run on it (and the admin API, `admin::start`).
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_with(config, None).await
    }

    /// Like `start`, taking over the sockets a previous autolb handed over (zero-downtime
    /// restart) where listener names and addresses match, and binding the rest.
    pub async fn start_with(
        config: Config,
        inherited: Option<upgrade::Sockets>,
    ) -> Result<Server, ServerError> {
        let mut inherited = inherited.unwrap_or_default();
        let threads = config.threads.max(1);
        let model = WorkerModel::from_env();
        let runtime = Runtime::new(config, threads);
        let snapshot = runtime.snapshot();
        let (shutdown, shutdown_rx) = watch::channel(Drain::Serving);
        let (admin_stop, _) = watch::channel(false);

        // Bind everything first: a bad address fails the start before any thread exists.
        let sockets_per_listener = match model {
            WorkerModel::PerCore => threads,
            WorkerModel::Shared => 1,
        };
        // Certificates of the https listeners, loaded before anything listens.
        let tls = crate::tls::Store::install(&snapshot.config)?;
        let mut bound = Vec::new();
        for l in &snapshot.config.listeners {
            let taken = inherited.listeners.remove(&l.name).filter(|list| {
                list.first()
                    .and_then(|s| s.local_addr().ok())
                    .is_some_and(|a| same_address(l.listen, a))
            });
            let sockets = match taken {
                Some(list) => {
                    tracing::info!(listener = %l.name, sockets = list.len(), "taking over listening sockets");
                    list
                }
                None => bind_listener(l, sockets_per_listener)?,
            };
            bound.push((l.name.clone(), sockets));
        }
        let backend = crate::state::backend(&snapshot.config)?;
        let admin_std = match inherited.admin.take().filter(|a| {
            a.local_addr()
                .is_ok_and(|addr| same_address(snapshot.config.admin.listen, addr))
        }) {
            Some(a) => a,
            None => bind_admin(snapshot.config.admin.listen).map_err(|reason| {
                ServerError::AdminBind {
                    addr: snapshot.config.admin.listen,
                    reason,
                }
            })?,
        };
        let admin_dup = admin_std.try_clone().ok();
        let shutdown_rx_keep = shutdown_rx.clone();
        let admin_listener = tokio::net::TcpListener::from_std(admin_std).map_err(|reason| {
            ServerError::AdminBind {
                addr: snapshot.config.admin.listen,
                reason,
            }
        })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|reason| ServerError::AdminBind {
                addr: snapshot.config.admin.listen,
                reason,
            })?;

        let workers = Workers::start(model, threads).map_err(ServerError::Workers)?;
        // Before the first connection: every connection is handed these services.
        let shared = crate::state::start(&runtime, admin_addr, backend);
        let acme = crate::acme::Acme::start(
            &snapshot.config,
            &tls,
            &shared.backend,
            shared.fleet.id(),
            runtime.alerts.clone(),
        )?;
        crate::tickets::start(&snapshot.config, &tls, &shared.backend, shared.fleet.id())?;
        let services = Services {
            runtime: runtime.clone(),
            shared: shared.clone(),
            acme: acme.clone(),
            tls: tls.clone(),
        };
        let running = Arc::new(listeners::Listeners::default());
        running.set_admin(admin_dup);
        for (name, sockets) in bound {
            let protocol = snapshot
                .config
                .listeners
                .iter()
                .find(|l| l.name == name)
                .map_or(Protocol::Http, |l| l.protocol);
            running.start(
                &name,
                protocol,
                sockets,
                &workers.handles,
                &services,
                &shutdown_rx,
            );
        }
        let health = Arc::new(crate::health::HealthChecks::new(runtime.events.clone()));
        runtime.observe_swaps(health.clone());
        trim::start();
        crate::alerts::start(runtime.clone());
        let ocsp = crate::ocsp::Ocsp::start(runtime.clone(), &tls);
        tokio::spawn(crate::alerts::watch_certificates(
            runtime.clone(),
            tls.clone(),
        ));
        crate::accesslog::start(&runtime);
        let autoscaler = Autoscaler::start_with_state(
            runtime.clone(),
            Some((shared.backend.clone(), shared.fleet.id().to_string())),
        );
        let reload_state = Arc::new(std::sync::Mutex::new(reload::ReloadState::default()));
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(16);
        let reload_handle = reload::Handle(reload_tx);
        let watcher = match reload::watch(&snapshot.config.source, reload_handle.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
                None
            }
        };
        tracing::info!(addr = %admin_addr, "admin listening");
        tracing::info!(
            threads,
            model = ?model,
            pools = snapshot.pools.len(),
            "autolb started"
        );
        let listeners = running.addrs();
        Ok(Server {
            runtime,
            health,
            shared_state: shared,
            acme,
            tls,
            listeners,
            admin_addr,
            running,
            shutdown_rx: shutdown_rx_keep,
            autoscaler,
            reload_state,
            reload_handle,
            reload_requests: std::sync::Mutex::new(Some(reload_rx)),
            admin: std::sync::Mutex::new(AdminPort {
                socket: Some(admin_listener),
                task: None,
            }),
            ocsp,
            _watcher: watcher,
            workers,
            shutdown,
            admin_stop,
        })
    }

    /// The stream of reload requests (file watcher, admin API); taken once by the loop that
    /// owns the server, which answers each with `Server::reload`.
    pub fn reload_requests(&self) -> Option<tokio::sync::mpsc::Receiver<reload::Request>> {
        self.reload_requests.lock().ok().and_then(|mut r| r.take())
    }

    /// Wait (at most `limit`) until every pool can serve: a ready backend in each pool
    /// that has backends or instances to wait for. A successor says READY only then.
    pub async fn wait_until_serving(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let snap = self.runtime.snapshot();
            let waiting: Vec<&str> = snap
                .pools
                .iter()
                .filter(|p| {
                    let expects = !p.backends.is_empty()
                        || snap.config.pools.iter().any(|c| {
                            c.name == p.name && c.autoscale.as_ref().is_some_and(|a| a.min > 0)
                        });
                    expects && p.ready_backends() == 0
                })
                .map(|p| p.name.as_str())
                .collect();
            if waiting.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pools = ?waiting, "taking over although these pools have no ready backend yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Open client connections over all listeners.
    pub fn open_connections(&self) -> i64 {
        self.running
            .stats()
            .values()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Serve the admin port with `serve(socket, stop)` (`admin::start`), once; `stop`
    /// turns true when the API must stop answering. The server ends the task at its
    /// shutdown.
    pub fn serve_admin<F>(
        &self,
        serve: impl FnOnce(tokio::net::TcpListener, watch::Receiver<bool>) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(mut port) = self.admin.lock() else {
            return;
        };
        if let Some(socket) = port.socket.take() {
            port.task = Some(tokio::spawn(serve(socket, self.admin_stop.subscribe())));
        }
    }

    /// OCSP stapling, for the admin API's metrics.
    pub(crate) fn ocsp(&self) -> Arc<crate::ocsp::Ocsp> {
        self.ocsp.clone()
    }

    /// The drain state every connection watches (the admin API's `/health/ready`).
    pub(crate) fn draining(&self) -> watch::Receiver<Drain> {
        self.shutdown_rx.clone()
    }

    /// Stop answering on the admin port now (a successor took it over) rather than at the
    /// end of the drain.
    pub fn stop_admin(&self) {
        let _ = self.admin_stop.send(true);
    }

    /// Stop accepting (new connections are refused, unless a successor shares the sockets),
    /// answer in-flight requests with `Connection: close`, let the connections finish as
    /// `drain` says for up to `grace`, then stop the workers. The admin API answers until
    /// the end (`/health/ready`: 503 from the start) unless a successor took it over.
    pub async fn shutdown(self, drain: Drain, grace: Duration) {
        let _ = self.shutdown.send(drain);
        // Every listening socket closes now: a new connection is refused at once, so that
        // clients and upstream balancers go elsewhere.
        self.running.close_all().await;
        self.runtime.tunnels.close_all();
        self.health.stop();
        tracing::info!(
            connections = self.open_connections(),
            grace = ?grace,
            "draining: no longer accepting"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while (self.open_connections() > 0 || self.runtime.tunnels.open() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.open_connections();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown grace period over: closing the connections still open"
            );
        }
        self.autoscaler.shutdown().await;
        let _ = self.admin_stop.send(true);
        let task = self.admin.lock().ok().and_then(|mut port| port.task.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.shutdown()).await;
        let access_log = self.runtime.snapshot().access_log.clone();
        let _ = tokio::task::spawn_blocking(move || access_log.flush(Duration::from_secs(2))).await;
        tracing::info!("autolb stopped");
    }
}
