//! TLS: https listeners on tokio-rustls (TLS 1.2 and 1.3, ALPN h2/http1.1, SNI over an
//! `ArcSwap`ed certificate store), certificate hot reload (file watcher and config reload),
//! TLS to backends (`client`), and the TLS metrics.
//!
//! The https listeners of one server live in its `Store`, built when the server starts and
//! handed to the accept loops, the config reload, the file watcher and the metrics page:
//! `reload_certificates` (config reload) swaps certificates in it and adds or drops
//! listeners, the watcher (files changed) swaps certificates, and the accept loops take their
//! listener from it. New handshakes use the new certificates; open connections keep theirs.

pub mod certs;
pub mod client;
pub mod client_auth;
mod client_names;
pub mod config_files;
pub mod metrics;
pub mod resolver;
pub mod server;
pub mod tickets;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use rustls::crypto::CryptoProvider;

use crate::config::watch::FileWatcher;

use crate::config::{Config, ConfigError, ConfigErrors, Protocol};
pub use certs::CertError;
pub use server::TlsListener;

/// Why TLS could not be set up for a listener.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener {listener:?}: {source}")]
    Certificate { listener: String, source: CertError },
    #[error("listener {listener:?}: {source}")]
    ClientAuth {
        listener: String,
        source: client_auth::ClientAuthError,
    },
    #[error("listener {listener:?}: TLS setup failed: {source}")]
    Rustls {
        listener: String,
        source: rustls::Error,
    },
}

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The crypto provider of every TLS config autolb builds (ring).
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// How often certificate files are compared even without file events (network file
/// systems, missed events).
const POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// The https listeners of one server, by name: built by `Store::install` when the server
/// starts and owned by it (two servers in one process share nothing). Config reloads swap
/// certificates in it and add or drop listeners, its file watcher swaps certificates, the
/// accept loops take their listener from it, and the metrics page renders its counts.
pub struct Store {
    listeners: RwLock<BTreeMap<String, Arc<TlsListener>>>,
    watcher: Mutex<Option<FileWatcher>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Store")
            .field("listeners", &self.all_listeners().len())
            .finish()
    }
}

impl Store {
    /// Set up TLS for every https listener of `config` (loading its certificates) and start
    /// watching their files. Called by `Server::start`, before the listeners accept.
    pub fn install(config: &Config) -> Result<Arc<Store>, TlsError> {
        let mut built = BTreeMap::new();
        for l in &config.listeners {
            if let (Protocol::Https, Some(tls)) = (l.protocol, &l.tls) {
                built.insert(l.name.clone(), Arc::new(TlsListener::new(&l.name, tls)?));
            }
        }
        let store = Arc::new(Store {
            listeners: RwLock::new(built),
            watcher: Mutex::new(None),
        });
        store.watch_files();
        Ok(store)
    }

    fn all_listeners(&self) -> Vec<Arc<TlsListener>> {
        self.listeners
            .read()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Watch the files of every installed listener (starting the watcher the first time):
    /// the config file's watcher (`config::watch`), which follows symlinks (Secret mounts)
    /// and calls back only when the bytes changed. The watcher holds the store weakly.
    fn watch_files(self: &Arc<Self>) {
        let paths: Vec<_> = self
            .all_listeners()
            .iter()
            .flat_map(|l| l.paths())
            .collect();
        let Ok(mut w) = self.watcher.lock() else {
            return;
        };
        match w.as_ref() {
            Some(w) => w.set_files(paths),
            None if paths.is_empty() => {}
            None => {
                let store = Arc::downgrade(self);
                let on_change = Box::new(move || {
                    if let Some(store) = store.upgrade() {
                        store.reload_from_disk();
                    }
                });
                match FileWatcher::start("certificates", paths, Some(POLL), on_change) {
                    Ok(started) => *w = Some(started),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the certificate watcher thread")
                    }
                }
            }
        }
    }

    /// The TLS state of the https listener `name`, if it was installed.
    pub fn listener(&self, name: &str) -> Option<Arc<TlsListener>> {
        self.listeners.read().ok()?.get(name).cloned()
    }
}

/// What a certificate reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertReload {
    /// Running listeners whose certificates (or strict_sni, ALPN) changed.
    pub changed: Vec<String>,
    /// https listeners new to the config: their TLS is set up, their sockets can be bound.
    pub added: Vec<String>,
    /// Listeners no longer https (or gone): their TLS state was dropped.
    pub removed: Vec<String>,
    /// Always empty: new https listeners are set up by the reload itself (see `added`).
    pub needs_restart: Vec<String>,
}

fn reload_error(file: &str, listener: &str, e: &dyn std::fmt::Display) -> ConfigError {
    ConfigError {
        file: file.to_string(),
        line: 0,
        column: 0,
        message: format!("listener \"{listener}\": {e}"),
    }
}

impl Store {
    /// Apply the TLS settings of `config` to the https listeners: the certificates of running
    /// ones (and their strict_sni, ALPN), and the TLS state of new ones (so that their sockets
    /// can be bound at once). Every pair of every listener is loaded first; only if all load is
    /// anything swapped in (the certificates already loaded keep serving otherwise). Call it on
    /// a config reload before binding new listeners; a config that `config_files::load` accepted
    /// fails here only if a file changed in between. Errors are `FILE: listener "NAME": ...`.
    pub fn reload_certificates(
        self: &Arc<Self>,
        config: &Config,
    ) -> Result<CertReload, ConfigErrors> {
        let file = config.source.display().to_string();
        let mut report = CertReload::default();
        let mut staged = Vec::new();
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for l in &config.listeners {
            let (Protocol::Https, Some(tls)) = (l.protocol, &l.tls) else {
                continue;
            };
            let Some(running) = self.listener(&l.name) else {
                match TlsListener::new(&l.name, tls) {
                    Ok(new) => fresh.push(Arc::new(new)),
                    Err(e) => errors.push(reload_error(&file, &l.name, &e)),
                }
                continue;
            };
            if running.unchanged(tls) {
                continue;
            }
            match server::load_pairs(&tls.certificates) {
                Ok(loaded) => staged.push((running, tls, loaded)),
                Err(e) => {
                    running
                        .stats
                        .reloads_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    errors.push(reload_error(&file, &l.name, &e));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        for (running, tls, loaded) in staged {
            running.swap_in(tls, &loaded);
            report.changed.push(running.name.clone());
        }
        if let Ok(mut listeners) = self.listeners.write() {
            for new in fresh {
                report.added.push(new.name.clone());
                listeners.insert(new.name.clone(), new);
            }
            listeners.retain(|name, _| {
                let keep = config
                    .listeners
                    .iter()
                    .any(|l| &l.name == name && l.protocol == Protocol::Https);
                if !keep {
                    report.removed.push(name.clone());
                }
                keep
            });
        }
        self.watch_files();
        Ok(report)
    }

    /// Re-read every listener's files that changed on disk (the watcher's callback).
    pub fn reload_from_disk(&self) {
        for l in self.all_listeners() {
            l.reload_from_disk();
        }
    }

    /// Append the TLS metrics (`autolb_tls_*`) in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let listeners = self.all_listeners();
        let stats: Vec<(String, &metrics::TlsStats)> = listeners
            .iter()
            .map(|l| (l.name.clone(), &l.stats))
            .collect();
        metrics::render(out, &stats);
    }
}
