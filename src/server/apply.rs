//! A reload's listeners: everything the new config adds or moves is bound before anything
//! changes (a listener that cannot bind refuses the whole reload, and the running
//! listeners go on), then started; removed ones stop.

use std::net::SocketAddr;

use super::{bind_listener, same_address, Server, WorkerModel};
use crate::config::{Config, Protocol};

/// The sockets a reload bound, not serving yet (dropped, and so closed, if the reload is
/// refused later).
pub(crate) struct Bound {
    listeners: Vec<(String, Protocol, SocketAddr, Vec<std::net::TcpListener>)>,
}

impl Server {
    /// Bind every listener of `cfg` that is new or moved; a listener that only changes its
    /// protocol keeps its sockets. Errors name each listener that cannot bind.
    pub(crate) fn bind_listeners(&self, cfg: &Config) -> Result<Bound, Vec<String>> {
        let count = match self.workers.model {
            WorkerModel::PerCore => self.workers.handles.len(),
            WorkerModel::Shared => 1,
        };
        let mut listeners = Vec::new();
        let mut errors = Vec::new();
        for l in &cfg.listeners {
            let current = self.running.get(&l.name);
            let same = current.is_some_and(|(addr, _)| same_address(l.listen, addr));
            if same && current.is_some_and(|(_, proto)| proto == l.protocol) {
                continue;
            }
            let sockets = if same {
                Ok(self.running.sockets(&l.name))
            } else {
                bind_listener(l, count)
            };
            match sockets {
                Ok(s) => listeners.push((l.name.clone(), l.protocol, l.listen, s)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(Bound { listeners })
        } else {
            Err(errors)
        }
    }

    /// Serve what `bound` holds (replacing listeners of the same name) and stop the
    /// listeners the live config no longer has. An https listener that did not run before
    /// waits for a restart (its TLS setup is made at start). Returns what it did.
    pub(crate) fn start_listeners(&self, bound: Bound) -> Vec<String> {
        let snapshot = self.runtime.snapshot();
        let mut notes = Vec::new();
        for (name, protocol, listen, sockets) in bound.listeners {
            if protocol == Protocol::Https && self.tls.listener(&name).is_none() {
                notes.push(format!(
                    "listener {name}: {protocol:?} on {listen} starts at the next restart"
                ));
                continue;
            }
            self.running.start(
                &name,
                protocol,
                sockets,
                &self.workers.handles,
                &self.services(),
                &self.shutdown_rx,
            );
            notes.push(format!(
                "listener {name} now serves {protocol:?} on {listen}"
            ));
        }
        // `http3` switched on or off, or its `quic:` settings changed, on a listener that
        // kept its address and protocol.
        let services = self.services();
        for l in &snapshot.config.listeners {
            self.running
                .sync_quic(&l.name, &self.workers.handles, &services, &self.shutdown_rx);
        }
        for name in self.running.names() {
            if !snapshot.config.listeners.iter().any(|l| l.name == name) {
                self.running.stop(&name);
                notes.push(format!("listener {name} stopped"));
            }
        }
        notes
    }
}
