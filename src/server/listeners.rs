//! The running listeners: their sockets (one per worker), accept loops, connection gauges
//! and stop switches. Reload adds, moves and removes listeners here without a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::listener::{self, ListenerStats};
use super::upgrade::Sockets;
use crate::config::Protocol;
use crate::runtime::Runtime;

struct Running {
    addr: SocketAddr,
    protocol: Protocol,
    stats: Arc<ListenerStats>,
    /// Stops this listener's accept loops (its open connections go on).
    stop: watch::Sender<bool>,
    /// Duplicates of its sockets, for a zero-downtime restart.
    sockets: Vec<std::net::TcpListener>,
}

/// Every listener this process serves, by name.
#[derive(Default)]
pub struct Listeners {
    map: RwLock<BTreeMap<String, Running>>,
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

    /// Duplicates of every socket, for a successor process.
    pub fn handover(&self, admin: Option<&std::net::TcpListener>) -> Sockets {
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
            admin: admin.and_then(|a| a.try_clone().ok()),
        }
    }

    /// Serve `sockets` as listener `name`: one accept loop per socket, spread over the
    /// workers. Replaces (and stops) a listener of the same name.
    pub fn start(
        &self,
        name: &str,
        protocol: Protocol,
        sockets: Vec<std::net::TcpListener>,
        handles: &[tokio::runtime::Handle],
        runtime: &Arc<Runtime>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let Some(addr) = sockets.first().and_then(|s| s.local_addr().ok()) else {
            return;
        };
        let stats = self
            .read()
            .get(name)
            .map(|r| r.stats.clone())
            .unwrap_or_default();
        let (stop, stop_rx) = watch::channel(false);
        let dups = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
        tracing::info!(listener = %name, addr = %addr, "listening");
        for (i, socket) in sockets.into_iter().enumerate() {
            let Some(handle) = handles.get(i % handles.len().max(1)) else {
                return;
            };
            handle.spawn(listener::accept_loop(
                socket,
                listener::AcceptContext {
                    name: name.to_string(),
                    runtime: runtime.clone(),
                    stats: stats.clone(),
                    shutdown: shutdown.clone(),
                    stop: stop_rx.clone(),
                },
            ));
        }
        let previous = self.write().insert(
            name.to_string(),
            Running {
                addr,
                protocol,
                stats,
                stop,
                sockets: dups,
            },
        );
        if let Some(old) = previous {
            let _ = old.stop.send(true);
        }
    }

    /// Drop the duplicates kept for a successor (at shutdown, after the accept loops were
    /// told to stop): the listening sockets close, so new connections are refused instead of
    /// waiting in a backlog nobody accepts from.
    pub fn release_sockets(&self) {
        for r in self.write().values_mut() {
            r.sockets.clear();
        }
    }

    /// Stop accepting on `name`; its open connections finish on their own.
    pub fn stop(&self, name: &str) {
        if let Some(old) = self.write().remove(name) {
            tracing::info!(listener = %name, addr = %old.addr, "listener stopped");
            let _ = old.stop.send(true);
        }
    }
}
