//! TLS session-ticket keys shared by a fleet (`tls.session_tickets.shared` with
//! `state.backend: redis`): per https listener, the node holding the fenced lease
//! `tickets:LISTENER` makes a new key every `rotate` and stores the current and previous
//! keys in the state backend, sealed (`state::seal`, the `AUTOLB_ACME_KEY` key); every node
//! reads them every few seconds and hands them to its listener's `tls::tickets::Ticketer`,
//! so a ticket one node issued resumes on any. While the backend does not answer, nodes
//! keep the keys they have; past one rotation period without it, each rotates on its own
//! (resumption then works per node only).

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Config, Protocol};
use crate::state::seal::{SealError, Sealer};
use crate::state::SharedState;
use crate::tls::tickets::{TicketKey, Ticketer};

/// How often every node looks at the lease and the shared keys.
const POLL: Duration = Duration::from_secs(3);
/// The lease's lifetime.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Why the fleet's ticket keys cannot be shared.
#[derive(Debug, thiserror::Error)]
pub enum TicketsError {
    #[error("tls.session_tickets.shared needs {0}")]
    Key(#[from] SealError),
}

/// What the lease holder stores (sealed): key material in base64, and when `current` was
/// made (Unix milliseconds).
#[derive(Serialize, Deserialize)]
struct Shared {
    current: String,
    previous: Option<String>,
    made_ms: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key(text: &str) -> Option<TicketKey> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    TicketKey::from_secret(&bytes)
}

/// One listener's side of the sharing.
struct Sharing {
    listener: String,
    ticketer: Weak<Ticketer>,
    backend: Arc<dyn SharedState>,
    sealer: Arc<Sealer>,
    node: String,
}

/// Start sharing the ticket keys of every https listener of `config` with
/// `session_tickets.shared` (nothing without a Redis state backend).
pub fn start(
    config: &Config,
    tls: &crate::tls::Store,
    backend: &Arc<dyn SharedState>,
    node: &str,
) -> Result<(), TicketsError> {
    if matches!(config.state, crate::config::State::Memory) {
        return Ok(());
    }
    let mut sealer: Option<Arc<Sealer>> = None;
    for l in &config.listeners {
        let (Protocol::Https, Some(settings)) = (l.protocol, l.tls.as_ref()) else {
            continue;
        };
        let Some(listener) = tls
            .listener(&l.name)
            .filter(|_| settings.session_tickets.shared)
        else {
            continue;
        };
        let sealer = match &sealer {
            Some(s) => Arc::clone(s),
            None => sealer.insert(Arc::new(Sealer::from_env()?)).clone(),
        };
        let sharing = Sharing {
            listener: l.name.clone(),
            ticketer: Arc::downgrade(&listener.tickets),
            backend: backend.clone(),
            sealer,
            node: node.to_string(),
        };
        tokio::spawn(sharing.run());
    }
    Ok(())
}

impl Sharing {
    fn name(&self) -> String {
        format!("tickets:{}", self.listener)
    }

    async fn read(&self) -> Option<Shared> {
        let sealed = self.backend.get_fenced(&self.name()).await.ok()??;
        match self.sealer.open(&self.name(), &sealed) {
            Ok(plain) => serde_json::from_slice(&plain).ok(),
            Err(e) => {
                tracing::warn!(listener = %self.listener, error = %e, "shared session-ticket keys unreadable");
                None
            }
        }
    }

    /// As the lease holder: a new current key when due (the old one kept as previous).
    async fn rotate(
        &self,
        ticketer: &Ticketer,
        shared: Option<Shared>,
        token: u64,
    ) -> Option<Shared> {
        let period = ticketer.rotate_every().as_millis() as u64;
        let due = shared
            .as_ref()
            .is_none_or(|s| unix_ms().saturating_sub(s.made_ms) >= period);
        if !due {
            return shared;
        }
        let fresh = TicketKey::generate(&ring::rand::SystemRandom::new())?;
        let next = Shared {
            current: b64(fresh.secret()),
            previous: shared.map(|s| s.current),
            made_ms: unix_ms(),
        };
        let plain = serde_json::to_vec(&next).ok()?;
        let sealed = self.sealer.seal(&self.name(), &plain).ok()?;
        let ttl = ticketer.rotate_every().saturating_mul(3);
        match self
            .backend
            .put_fenced(&self.name(), token, sealed, ttl)
            .await
        {
            Ok(true) => {
                tracing::info!(listener = %self.listener, "session-ticket key rotated for the fleet");
                Some(next)
            }
            Ok(false) | Err(_) => None,
        }
    }

    async fn run(self) {
        let mut last_sync = Instant::now();
        loop {
            let Some(ticketer) = self.ticketer.upgrade() else {
                return;
            };
            let mut shared = None;
            if let Ok(lease) = self
                .backend
                .lease(&self.name(), &self.node, LEASE_TTL)
                .await
            {
                shared = self.read().await;
                if lease.holder == self.node {
                    shared = self.rotate(&ticketer, shared, lease.token).await;
                }
            }
            let keys = shared
                .as_ref()
                .and_then(|s| Some((key(&s.current)?, s.previous.as_deref().and_then(key))));
            match keys {
                Some((current, previous)) => {
                    ticketer.set_shared(current, previous);
                    last_sync = Instant::now();
                }
                None if last_sync.elapsed() > ticketer.rotate_every() => ticketer.set_local(),
                None => {}
            }
            drop(ticketer);
            tokio::time::sleep(POLL).await;
        }
    }
}
