//! ACME across a fleet (`state.backend: redis`): per managed listener, the node that holds
//! the lease `acme:LISTENER` (fenced: a newer holder's token refuses a stale leader's
//! writes) orders and renews; it stores the account credentials, the chain and the key in
//! the state backend, sealed (`state::seal`) under the key in `AUTOLB_ACME_KEY`;
//! every node reads them every few seconds, stores them on disk and serves them (no
//! restart). http-01 tokens are shared too, so whichever node the CA reaches answers.
//! Without the backend, nodes keep serving what they have and nobody orders.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{order, store, unix_now, Acme, AcmeError, Managed};
use crate::state::seal::Sealer;
use crate::state::SharedState;

/// The lease's lifetime; the holder renews it three times as often.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often every node looks at the lease and the shared certificate.
const POLL: Duration = Duration::from_secs(3);
/// How long the shared certificate stays in the backend without being stored again.
const BUNDLE_TTL: Duration = Duration::from_secs(400 * 86_400);

/// What the ordering node shares (sealed).
#[derive(Serialize, Deserialize, PartialEq)]
struct Bundle {
    account: Option<String>,
    chain: String,
    key: String,
}

/// The fleet side of the ACME service.
pub struct Fleet {
    backend: Arc<dyn SharedState>,
    node: String,
    /// Seals what is stored in the backend (`state::seal`).
    key: Sealer,
}

impl Fleet {
    pub fn new(backend: Arc<dyn SharedState>, node: &str) -> Result<Fleet, AcmeError> {
        Ok(Fleet {
            backend,
            node: node.to_string(),
            key: Sealer::from_env().map_err(|e| {
                AcmeError::Setup(format!("tls.acme with state.backend: redis needs {e}"))
            })?,
        })
    }

    pub fn backend(&self) -> &Arc<dyn SharedState> {
        &self.backend
    }

    /// The http-01 key authorization another node published for `token`.
    pub async fn token(&self, token: &str) -> Option<String> {
        self.backend
            .get_kv(&order::token_key(token))
            .await
            .ok()
            .flatten()
    }

    fn seal(&self, name: &str, plain: &[u8]) -> Result<String, AcmeError> {
        self.key
            .seal(name, plain)
            .map_err(|e| AcmeError::Fleet(e.to_string()))
    }

    fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, AcmeError> {
        self.key
            .open(name, sealed)
            .map_err(|e| AcmeError::Fleet(e.to_string()))
    }

    /// The shared bundle of lease `name`, if any.
    async fn read(&self, name: &str) -> Result<Option<Bundle>, AcmeError> {
        let Some(sealed) = self
            .backend
            .get_fenced(name)
            .await
            .map_err(|e| AcmeError::Fleet(e.to_string()))?
        else {
            return Ok(None);
        };
        let plain = self.open(name, &sealed)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| AcmeError::Fleet(format!("shared ACME data: {e}")))
    }

    /// Share what `m` has on disk under lease `name` with fencing `token`.
    async fn publish(&self, m: &Managed, name: &str, token: u64) -> Result<(), AcmeError> {
        let Some((chain, key)) = store::read_pem(&m.paths) else {
            return Ok(());
        };
        let bundle = Bundle {
            account: store::read_account(&m.paths),
            chain,
            key,
        };
        let plain = serde_json::to_vec(&bundle).map_err(|e| AcmeError::Fleet(e.to_string()))?;
        let sealed = self.seal(name, &plain)?;
        match self
            .backend
            .put_fenced(name, token, sealed, BUNDLE_TTL)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AcmeError::Fleet(
                "another node took over ordering: its certificate wins".into(),
            )),
            Err(e) => Err(AcmeError::Fleet(e.to_string())),
        }
    }

    /// Serve (and store) the shared certificate when it differs from ours.
    fn adopt(&self, m: &Managed, bundle: &Bundle) -> Result<(), AcmeError> {
        if let Some(account) = &bundle.account {
            if store::read_account(&m.paths).as_deref() != Some(account) {
                store::write_private(&m.paths.account, account.as_bytes())?;
            }
        }
        let ours = store::read_pem(&m.paths);
        if ours.as_ref().map(|(c, _)| c) == Some(&bundle.chain) {
            return Ok(());
        }
        let pair = store::save_certificate(&m.paths, &bundle.chain, &bundle.key)?;
        m.install(pair, "taken from the fleet");
        Ok(())
    }

    /// One look at `m`: take or renew the lease; adopt the shared certificate; as the
    /// holder, order when due (not before `retry_at` after a failure) and share the result.
    /// Answers how long to sleep.
    pub(super) async fn step(
        &self,
        m: &Managed,
        acme: &Acme,
        failures: &mut u32,
        retry_at: &mut Option<Instant>,
    ) -> Duration {
        let name = format!("acme:{}", m.listener);
        let lease = match self.backend.lease(&name, &self.node, LEASE_TTL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(listener = %m.listener, error = %e, "ACME lease unavailable: serving the certificate we have");
                return POLL;
            }
        };
        let shared = match self.read(&name).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(listener = %m.listener, error = %e, "shared ACME certificate unreadable");
                None
            }
        };
        if let Some(b) = &shared {
            if let Err(e) = self.adopt(m, b) {
                tracing::warn!(listener = %m.listener, error = %e, "shared ACME certificate not taken");
            }
        }
        if lease.holder != self.node {
            return POLL;
        }
        if shared.is_none() && m.served.current.load().is_some() {
            // The backend lost it (restarted empty): share ours again.
            if let Err(e) = self.publish(m, &name, lease.token).await {
                tracing::warn!(listener = %m.listener, error = %e, "ACME certificate not shared");
            }
        }
        if !m.due_in(unix_now()).is_zero() || retry_at.is_some_and(|t| Instant::now() < t) {
            return POLL;
        }
        let result = match acme.order(m).await {
            Ok(()) => self.publish(m, &name, lease.token).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                *failures = 0;
                *retry_at = None;
            }
            Err(e) => {
                *failures += 1;
                let retry = super::backoff(*failures);
                *retry_at = Some(Instant::now() + retry);
                acme.failed(m, &e, retry);
            }
        }
        POLL
    }
}
