//! One https listener's TLS state: its rustls `ServerConfig` (TLS 1.2/1.3 only, ALPN,
//! session cache and tickets) behind an `ArcSwap`, the SNI resolver, the configured pairs
//! for reloads, and the handshake with a timeout and per-reason accounting.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::certs::{self, CertError, LoadedPair};
use super::client_auth::{ClientAuthSlot, ClientIdentity};
use super::metrics::{Failure, TlsStats};
use super::resolver::{CertStore, SniResolver};
use super::{provider, TlsError};
use crate::config::{CertPair, ListenerTls};

/// TLS sessions remembered for resumption, per listener.
const SESSION_CACHE: usize = 20_000;

/// A completed handshake.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// ALPN chose `h2`.
    pub h2: bool,
    /// The client's verified certificate (`client_auth`).
    pub client: Option<Arc<ClientIdentity>>,
}

/// What a reload may change: the pairs, their fingerprint, `strict_sni` and ALPN.
struct Current {
    pairs: Vec<CertPair>,
    strict: bool,
    alpn: Vec<String>,
    /// Fingerprint of the files now served, and of the last refused state (not re-reported).
    fingerprint: u64,
    refused: Option<u64>,
}

/// The TLS side of one https listener.
pub struct TlsListener {
    pub name: String,
    config: ArcSwap<ServerConfig>,
    resolver: Arc<SniResolver>,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    /// The same, typed: its keys are set by the fleet (`tls.session_tickets.shared`).
    pub tickets: Arc<super::tickets::Ticketer>,
    /// `client_auth`: the verifier of both TLS configs (TCP and QUIC).
    pub client_auth: Arc<ClientAuthSlot>,
    current: Mutex<Current>,
    pub stats: TlsStats,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("name", &self.name)
            .finish()
    }
}

/// Load every pair of a listener (all or nothing).
pub fn load_pairs(pairs: &[CertPair]) -> Result<Vec<LoadedPair>, CertError> {
    pairs
        .iter()
        .map(|p| certs::load_pair(&p.cert, &p.key))
        .collect()
}

fn combine(fingerprints: impl Iterator<Item = u64>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for f in fingerprints {
        hasher.update(&f.to_le_bytes());
    }
    hasher.digest()
}

/// The fingerprint of a listener's files as they are on disk now.
fn disk_fingerprint(pairs: &[CertPair]) -> u64 {
    combine(
        pairs
            .iter()
            .map(|p| certs::fingerprint(&[p.cert.as_path(), p.key.as_path()])),
    )
}

/// The fingerprint of what was loaded (equal to `disk_fingerprint` of unchanged files).
fn loaded_fingerprint(loaded: &[LoadedPair]) -> u64 {
    combine(loaded.iter().map(|p| p.fingerprint))
}

fn server_config(
    resolver: Arc<SniResolver>,
    alpn: &[String],
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    client_auth: Arc<ClientAuthSlot>,
) -> Result<ServerConfig, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.session_storage = sessions;
    cfg.ticketer = ticketer;
    Ok(cfg)
}

fn log_pairs(listener: &str, pairs: &[LoadedPair], what: &str) {
    for p in pairs {
        tracing::info!(
            listener,
            cert = %p.cert_path.display(),
            names = ?p.names,
            not_after = %p.not_after_text,
            "{what}"
        );
        if let Some(w) = p.validity_warning() {
            tracing::warn!(listener, "{w}");
        }
    }
}

impl TlsListener {
    /// Load the listener's certificates and build its TLS config.
    pub fn new(name: &str, tls: &ListenerTls) -> Result<TlsListener, TlsError> {
        let loaded = load_pairs(&tls.certificates).map_err(|source| TlsError::Certificate {
            listener: name.to_string(),
            source,
        })?;
        let rustls_err = |source| TlsError::Rustls {
            listener: name.to_string(),
            source,
        };
        let resolver = Arc::new(SniResolver::new(CertStore::new(&loaded, tls.strict_sni)));
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let tickets =
            super::tickets::Ticketer::new(tls.session_tickets.rotate).ok_or_else(|| {
                rustls_err(rustls::Error::General(
                    "no randomness for ticket keys".into(),
                ))
            })?;
        let ticketer: Arc<dyn ProducesTickets> = tickets.clone();
        let client_auth = Arc::new(ClientAuthSlot::new(tls.client_auth.as_ref()).map_err(
            |source| TlsError::ClientAuth {
                listener: name.to_string(),
                source,
            },
        )?);
        let config = server_config(
            resolver.clone(),
            &tls.alpn,
            sessions.clone(),
            ticketer.clone(),
            client_auth.clone(),
        )
        .map_err(rustls_err)?;
        log_pairs(name, &loaded, "certificate loaded");
        let listener = TlsListener {
            name: name.to_string(),
            config: ArcSwap::from_pointee(config),
            resolver,
            sessions,
            ticketer,
            tickets,
            client_auth,
            current: Mutex::new(Current {
                pairs: tls.certificates.clone(),
                strict: tls.strict_sni,
                alpn: tls.alpn.clone(),
                fingerprint: loaded_fingerprint(&loaded),
                refused: None,
            }),
            stats: TlsStats::default(),
        };
        listener.record_expiry(&loaded);
        Ok(listener)
    }

    /// Serve `source`'s certificates (ACME) too, from the next handshake on.
    pub fn set_source(&self, source: Arc<dyn super::resolver::CertSource>) {
        self.resolver.set_source(source);
    }

    /// The certificate chains served now from the listener's files (leaf first).
    pub fn chains(&self) -> Vec<Vec<rustls_pki_types::CertificateDer<'static>>> {
        self.resolver.chains()
    }

    /// Staple `ocsp` (DER) to the served certificate whose leaf is `leaf`, or none.
    pub fn staple(&self, leaf: &[u8], ocsp: Option<Arc<[u8]>>) {
        self.resolver.staple(leaf, ocsp);
    }

    fn record_expiry(&self, loaded: &[LoadedPair]) {
        if let Ok(mut e) = self.stats.expiry.lock() {
            *e = loaded
                .iter()
                .map(|p| (p.cert_path.display().to_string(), p.not_after))
                .collect();
        }
    }

    /// Every file the listener reads (for the watcher).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = self.current.lock().map_or_else(
            |_| Vec::new(),
            |c| {
                c.pairs
                    .iter()
                    .flat_map(|p| [p.cert.clone(), p.key.clone()])
                    .collect()
            },
        );
        paths.extend(self.client_auth.paths());
        paths
    }

    /// Whether `tls` is what is served already (same pairs, same bytes on disk, same
    /// strict_sni and ALPN).
    pub fn unchanged(&self, tls: &ListenerTls) -> bool {
        let Ok(cur) = self.current.lock() else {
            return true;
        };
        cur.pairs == tls.certificates
            && cur.fingerprint == disk_fingerprint(&tls.certificates)
            && cur.strict == tls.strict_sni
            && cur.alpn == tls.alpn
            && self.client_auth.unchanged(tls.client_auth.as_ref())
    }

    /// Serve `loaded` (the pairs of `tls`, loaded by `load_pairs`) with `tls`'s strict_sni
    /// and ALPN from the next handshake on.
    pub fn swap_in(&self, tls: &ListenerTls, loaded: &[LoadedPair]) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        self.resolver.swap(CertStore::new(loaded, tls.strict_sni));
        if !self.client_auth.unchanged(tls.client_auth.as_ref()) {
            match self.client_auth.set(tls.client_auth.as_ref()) {
                Ok(()) => tracing::info!(listener = %self.name, "client_auth applied"),
                Err(e) => {
                    self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(listener = %self.name, error = %e, "client_auth change not applied")
                }
            }
        }
        if cur.alpn != tls.alpn {
            match server_config(
                self.resolver.clone(),
                &tls.alpn,
                self.sessions.clone(),
                self.ticketer.clone(),
                self.client_auth.clone(),
            ) {
                Ok(c) => self.config.store(Arc::new(c)),
                Err(e) => {
                    tracing::error!(listener = %self.name, error = %e, "alpn change not applied")
                }
            }
        }
        let fingerprint = loaded_fingerprint(loaded);
        if cur.pairs != tls.certificates || cur.fingerprint != fingerprint {
            self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            log_pairs(&self.name, loaded, "certificate reloaded");
        }
        self.record_expiry(loaded);
        *cur = Current {
            pairs: tls.certificates.clone(),
            strict: tls.strict_sni,
            alpn: tls.alpn.clone(),
            fingerprint,
            refused: None,
        };
    }

    /// Re-read the files if they changed on disk (watcher, poll). A bad new state is
    /// refused once, loudly; the certificates already loaded keep serving.
    pub fn reload_from_disk(&self) {
        match self.client_auth.reload_from_disk() {
            Ok(false) => {}
            Ok(true) => {
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(listener = %self.name, "client_auth CA/CRL reloaded");
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    listener = %self.name,
                    error = %e,
                    "client_auth reload refused: the previous CA and CRL stay"
                );
            }
        }
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let fingerprint = disk_fingerprint(&cur.pairs);
        if fingerprint == cur.fingerprint || cur.refused == Some(fingerprint) {
            return;
        }
        match load_pairs(&cur.pairs) {
            Ok(loaded) => {
                self.resolver.swap(CertStore::new(&loaded, cur.strict));
                cur.fingerprint = loaded_fingerprint(&loaded);
                cur.refused = None;
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                log_pairs(&self.name, &loaded, "certificate reloaded");
                self.record_expiry(&loaded);
            }
            Err(e) => {
                cur.refused = Some(fingerprint);
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    listener = %self.name,
                    error = %e,
                    "certificate reload refused: the previous certificate keeps serving"
                );
            }
        }
    }

    /// The TLS side of the listener's QUIC endpoint (`http3: true`): TLS 1.3 (QUIC has no
    /// other), ALPN h3, the same SNI resolver (a certificate swap applies to both), session
    /// cache and ticket keys as TCP. 0-RTT only with `early_data` (then resumption by the
    /// session cache alone).
    pub fn quic_config(
        &self,
        early_data: bool,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let err = |source| TlsError::Rustls {
            listener: self.name.clone(),
            source,
        };
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err)?
            .with_client_cert_verifier(self.client_auth.clone())
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"h3".to_vec()];
        cfg.session_storage = self.sessions.clone();
        if early_data {
            // rustls takes early data only on stateful resumption: a session is taken out
            // of the cache by the first ClientHello that uses it, so a replayed one finds
            // none and its early data is refused. QUIC takes u32::MAX (sized by the
            // transport).
            cfg.max_early_data_size = u32::MAX;
        } else {
            cfg.ticketer = self.ticketer.clone();
        }
        quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| err(rustls::Error::General(format!("QUIC: {e}"))))
    }

    /// TLS handshake with `stream`, bounded by `timeout`.
    pub async fn accept(&self, stream: TcpStream, timeout: Duration) -> Result<Accepted, Failure> {
        let acceptor = TlsAcceptor::from(self.config.load_full());
        let failure = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                match self.client_auth.admit(conn.peer_certificates(), resumed) {
                    Ok(client) => {
                        self.stats.handshake(conn.protocol_version());
                        let h2 = conn.alpn_protocol() == Some(b"h2");
                        return Ok(Accepted { stream, h2, client });
                    }
                    Err(refused) => {
                        tracing::debug!(listener = %self.name, reason = %refused.0, "client certificate refused");
                        Failure::ClientCertificate
                    }
                }
            }
            Ok(Err(e)) => {
                let why = Failure::of(&e);
                tracing::debug!(listener = %self.name, error = %e, reason = why.label(), "TLS handshake failed");
                why
            }
            Err(_) => Failure::Timeout,
        };
        self.stats.failure(failure);
        Err(failure)
    }
}
