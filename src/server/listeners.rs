//! The running listeners: their sockets (one per worker), accept loops, connection gauges
//! and stop switches. Reload adds, moves and removes listeners here without a restart; a
//! drain closes every listening socket of this process at once (`close_all`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listener::{self, ListenerStats};
use super::upgrade::Sockets;
use crate::config::Protocol;

struct Running {
    addr: SocketAddr,
    protocol: Protocol,
    stats: Arc<ListenerStats>,
    /// Its open connections, for `limits.max_connections*`.
    admission: Arc<super::admission::Counts>,
    /// Stops this listener's accept loops (its open connections go on).
    stop: watch::Sender<bool>,
    /// Duplicates of its sockets, for a zero-downtime restart (empty once closed).
    sockets: Vec<std::net::TcpListener>,
    /// Its accept loops (each owns one socket and closes it when it ends).
    loops: Vec<JoinHandle<()>>,
    /// `http3: true`: its QUIC endpoint on the same port (UDP).
    quic: Option<super::quic::Quic>,
}

/// Every listener this process serves, by name.
#[derive(Default)]
pub struct Listeners {
    map: RwLock<BTreeMap<String, Running>>,
    /// A duplicate of the admin socket, for a zero-downtime restart.
    admin: Mutex<Option<std::net::TcpListener>>,
}

impl Listeners {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Running>> {
        match self.map.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Running>> {
        match self.map.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Connection gauges by listener (a copy, for the admin API and metrics).
    pub fn stats(&self) -> BTreeMap<String, Arc<ListenerStats>> {
        self.read()
            .iter()
            .map(|(n, r)| (n.clone(), r.stats.clone()))
            .collect()
    }

    /// Each listener's counts for `/metrics`, by name.
    pub fn counts(&self) -> Vec<crate::metrics::ListenerCounts> {
        self.read()
            .iter()
            .map(|(name, r)| crate::metrics::ListenerCounts {
                name: name.clone(),
                connections: r.stats.connections.load(Ordering::Relaxed),
                quic: r
                    .stats
                    .quic
                    .shown
                    .load(Ordering::Relaxed)
                    .then(|| r.stats.quic.counts().to_vec()),
            })
            .collect()
    }

    /// Bound addresses by listener.
    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.read()
            .iter()
            .map(|(n, r)| (n.clone(), r.addr))
            .collect()
    }

    /// Where `name` listens and with what protocol, if it runs.
    pub fn get(&self, name: &str) -> Option<(SocketAddr, Protocol)> {
        self.read().get(name).map(|r| (r.addr, r.protocol))
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Duplicates of the sockets of listener `name` (none if it does not run).
    pub fn sockets(&self, name: &str) -> Vec<std::net::TcpListener> {
        self.read().get(name).map_or_else(Vec::new, |r| {
            r.sockets
                .iter()
                .filter_map(|s| s.try_clone().ok())
                .collect()
        })
    }

    /// Keep a duplicate of the admin socket, for a successor process.
    pub fn set_admin(&self, admin: Option<std::net::TcpListener>) {
        *self.admin.lock().unwrap_or_else(|p| p.into_inner()) = admin;
    }

    /// Duplicates of every socket, for a successor process.
    pub fn handover(&self) -> Sockets {
        let admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let map = self.read();
        Sockets {
            listeners: map
                .iter()
                .map(|(n, r)| {
                    (
                        n.clone(),
                        r.sockets
                            .iter()
                            .filter_map(|s| s.try_clone().ok())
                            .collect(),
                    )
                })
                .collect(),
            admin: admin.as_ref().and_then(|a| a.try_clone().ok()),
        }
    }

    /// Close every listening socket of this process (a drain): stop the accept loops, wait
    /// until each has closed its socket, and drop the duplicates kept for a successor. From
    /// then on a new connection is refused by the kernel, unless a successor shares the
    /// sockets (a zero-downtime restart), which then accepts it. Gauges stay readable.
    pub async fn close_all(&self) {
        let mut loops = Vec::new();
        {
            let mut map = self.write();
            for r in map.values_mut() {
                let _ = r.stop.send(true);
                if let Some(q) = &r.quic {
                    q.stop();
                }
                r.sockets.clear();
                loops.append(&mut r.loops);
            }
        }
        self.set_admin(None);
        for l in loops {
            let _ = l.await;
        }
    }

    /// Serve `sockets` as listener `name`: one accept loop per socket, spread over the
    /// workers. Replaces (and stops) a listener of the same name.
    pub(crate) fn start(
        &self,
        name: &str,
        protocol: Protocol,
        sockets: Vec<std::net::TcpListener>,
        handles: &[tokio::runtime::Handle],
        services: &super::Services,
        shutdown: &watch::Receiver<super::Drain>,
    ) {
        let Some(addr) = sockets.first().and_then(|s| s.local_addr().ok()) else {
            return;
        };
        // A restarted listener keeps its statistics and its open connections' count.
        let (stats, admission) = self
            .read()
            .get(name)
            .map(|r| (r.stats.clone(), r.admission.clone()))
            .unwrap_or_default();
        // A QUIC endpoint on the same address goes on serving (its settings follow below).
        let quic = self
            .write()
            .get_mut(name)
            .and_then(|r| r.quic.take())
            .filter(|q| q.addr == addr);
        let (stop, stop_rx) = watch::channel(false);
        let dups = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
        tracing::info!(listener = %name, addr = %addr, "listening");
        let mut loops = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let Some(handle) = handles.get(i % handles.len().max(1)) else {
                return;
            };
            loops.push(handle.spawn(listener::accept_loop(
                socket,
                listener::AcceptContext {
                    name: name.to_string(),
                    services: services.clone(),
                    stats: stats.clone(),
                    admission: admission.clone(),
                    shutdown: shutdown.clone(),
                    stop: stop_rx.clone(),
                },
            )));
        }
        let previous = self.write().insert(
            name.to_string(),
            Running {
                addr,
                protocol,
                stats,
                admission,
                stop,
                sockets: dups,
                loops,
                quic,
            },
        );
        if let Some(old) = previous {
            let _ = old.stop.send(true);
            if let Some(q) = &old.quic {
                q.stop();
            }
        }
        self.sync_quic(name, handles, services, shutdown);
    }

    /// Start, update or stop listener `name`'s QUIC endpoint as the config's `http3` says
    /// (at start and on every reload).
    pub(crate) fn sync_quic(
        &self,
        name: &str,
        handles: &[tokio::runtime::Handle],
        services: &super::Services,
        shutdown: &watch::Receiver<super::Drain>,
    ) {
        let want = services
            .runtime
            .snapshot()
            .config
            .listeners
            .iter()
            .find(|l| l.name == name && l.protocol == Protocol::Https)
            .and_then(|l| l.http3.clone());
        let mut map = self.write();
        let Some(r) = map.get_mut(name) else {
            return;
        };
        match (r.quic.as_mut(), want) {
            (None, None) => {}
            (Some(q), None) => {
                tracing::info!(listener = %name, "HTTP/3 stopped");
                q.stop();
                r.quic = None;
            }
            (Some(q), Some(want)) => {
                if let Err(e) = q.update(&services.tls, name, &want) {
                    tracing::error!(error = %e, "HTTP/3 settings not applied");
                }
            }
            (None, Some(want)) => {
                let Some(handle) = handles.first() else {
                    return;
                };
                let started = super::quic::Quic::start(
                    name,
                    r.addr,
                    &want,
                    services,
                    (r.stats.clone(), r.admission.clone()),
                    shutdown,
                    handle,
                );
                match started {
                    Ok(q) => r.quic = Some(q),
                    Err(e) => tracing::error!(error = %e, "not serving HTTP/3"),
                }
            }
        }
    }

    /// Stop accepting on `name`; its open connections finish on their own.
    pub fn stop(&self, name: &str) {
        if let Some(old) = self.write().remove(name) {
            tracing::info!(listener = %name, addr = %old.addr, "listener stopped");
            let _ = old.stop.send(true);
            if let Some(q) = &old.quic {
                q.stop();
            }
        }
    }
}
