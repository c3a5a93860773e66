//! ACME (RFC 8555) certificates for https listeners with `tls.acme`: the service built at
//! start-up (one task per such listener) that loads the stored certificate, orders one when
//! there is none or it expires within `renew_before` (retrying with backoff and jitter),
//! stores it (0600) and swaps it into the listener's resolver; the http-01 answers the http
//! listeners give before routing; the `autolb_acme_*` metrics. A failed order keeps the old
//! certificate serving, counts `autolb_acme_orders_total{result="failure"}` and raises an
//! `acme_failed` alert. With `state.backend: redis`, `fleet` makes one node order for all.

pub mod fleet;
mod order;
mod serve;
mod store;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::alerts::{self, Alert};
use crate::config::{Acme as Settings, AlertKind, Config, Protocol};
use crate::prom::{header, label};
use crate::state::SharedState;
use crate::tls::certs::LoadedPair;

pub use serve::Challenges;

/// The path prefix of http-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// First retry after a failed order; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest sleep between two looks at a certificate (clock jumps, fleet changes).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Why ACME could not be set up or an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Setup(String),
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME order refused: {0}")]
    Refused(String),
    #[error("tls-alpn-01 certificate: {0}")]
    Challenge(String),
    #[error("{}: {reason}", .path.display())]
    Storage {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("fleet: {0}")]
    Fleet(String),
}

/// Order counts (`autolb_acme_orders_total{result}`).
#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One listener whose certificate ACME manages.
struct Managed {
    listener: String,
    settings: Settings,
    paths: store::Paths,
    served: Arc<serve::Served>,
}

impl Managed {
    /// How long until the certificate is due for renewal (zero: now).
    fn due_in(&self, now: i64) -> Duration {
        let current = self.served.current.load();
        let Some(pair) = current.as_ref() else {
            return Duration::ZERO;
        };
        if !covers(pair, &self.settings.domains) {
            return Duration::ZERO;
        }
        let renew_at = pair.not_after - self.settings.renew_before.as_secs() as i64;
        Duration::from_secs(renew_at.saturating_sub(now).max(0) as u64)
    }

    /// Serve `pair` from the next handshake on.
    fn install(&self, pair: LoadedPair, how: &str) {
        tracing::info!(
            listener = %self.listener,
            names = ?pair.names,
            not_after = %pair.not_after_text,
            "ACME certificate {how}"
        );
        self.served.swap(pair);
    }
}

/// Whether `pair` names every one of `domains` (a changed `domains` list orders anew).
fn covers(pair: &LoadedPair, domains: &[String]) -> bool {
    domains.iter().all(|d| pair.names.contains(d))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The ACME service of one server: what it manages, the pending challenges, the counts.
pub struct Acme {
    managed: Vec<Arc<Managed>>,
    challenges: Arc<Challenges>,
    stats: Arc<Stats>,
    fleet: Option<Arc<fleet::Fleet>>,
    /// The server's alert queue (failed orders).
    alerts: Arc<alerts::AlertQueue>,
}

impl Acme {
    /// Set up ACME for every https listener of `config` with `tls.acme` (their TLS must be
    /// installed already: `tls::Store::install`), serving stored certificates at once, and start
    /// ordering and renewing. `None` when no listener uses ACME. With a Redis state
    /// backend, the fleet shares one order (the key variable must be set).
    pub fn start(
        config: &Config,
        tls: &crate::tls::Store,
        backend: &Arc<dyn SharedState>,
        node_id: &str,
        alerts: Arc<alerts::AlertQueue>,
    ) -> Result<Option<Arc<Acme>>, AcmeError> {
        let challenges = Arc::new(Challenges::default());
        let mut managed = Vec::new();
        for l in &config.listeners {
            let (Protocol::Https, Some(settings)) =
                (l.protocol, l.tls.as_ref().and_then(|t| t.acme.as_ref()))
            else {
                continue;
            };
            let paths = store::Paths::new(&settings.storage, &l.name, &settings.directory);
            // Fails early on a CA bundle that does not load.
            order::http_client(settings)?;
            let stored = store::load(&paths);
            if let Some(p) = &stored {
                tracing::info!(listener = %l.name, names = ?p.names, not_after = %p.not_after_text, "stored ACME certificate loaded");
            }
            let served = Arc::new(serve::Served::new(stored, challenges.clone()));
            if let Some(tls) = tls.listener(&l.name) {
                tls.set_source(served.clone());
            }
            let http_listener = config
                .listeners
                .iter()
                .any(|o| o.protocol == Protocol::Http);
            if settings.challenge == crate::config::AcmeChallenge::Http01 && !http_listener {
                tracing::warn!(listener = %l.name, "acme challenge http-01 needs an http listener on port 80: there is none");
            }
            managed.push(Arc::new(Managed {
                listener: l.name.clone(),
                settings: settings.clone(),
                paths,
                served,
            }));
        }
        if managed.is_empty() {
            return Ok(None);
        }
        let fleet = match &config.state {
            crate::config::State::Redis(_) => {
                Some(Arc::new(fleet::Fleet::new(backend.clone(), node_id)?))
            }
            crate::config::State::Memory => None,
        };
        let acme = Arc::new(Acme {
            managed,
            challenges,
            stats: Arc::new(Stats::default()),
            fleet,
            alerts,
        });
        for m in &acme.managed {
            tokio::spawn(run(m.clone(), acme.clone()));
        }
        Ok(Some(acme))
    }

    /// The key authorization for the http-01 `token` (this node's, else the fleet's).
    pub async fn http01(&self, token: &str) -> Option<String> {
        if let Some(found) = self.challenges.http(token) {
            return Some(found);
        }
        self.fleet.as_ref()?.token(token).await
    }

    /// Append `autolb_acme_orders_total{result}` and each ACME certificate's not-after date.
    pub fn render_metrics(&self, out: &mut String) {
        header(
            out,
            "acme_orders_total",
            "counter",
            "ACME orders by result (failure: the old certificate kept serving).",
        );
        for (result, c) in [("success", &self.stats.ok), ("failure", &self.stats.failed)] {
            let _ = writeln!(
                out,
                "autolb_acme_orders_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "acme_certificate_expiry_timestamp_seconds",
            "gauge",
            "Not-after date of the ACME certificate served for each name, in Unix seconds.",
        );
        for m in &self.managed {
            let current = m.served.current.load();
            let Some(pair) = current.as_ref() else {
                continue;
            };
            for name in &pair.names {
                let _ = writeln!(
                    out,
                    "autolb_acme_certificate_expiry_timestamp_seconds{{listener=\"{}\",name=\"{}\"}} {}",
                    label(&m.listener),
                    label(name),
                    pair.not_after
                );
            }
        }
    }

    fn failed(&self, m: &Managed, e: &AcmeError, retry: Duration) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let serving = m
            .served
            .current
            .load()
            .as_ref()
            .map(|p| p.not_after_text.clone());
        tracing::error!(listener = %m.listener, error = %e, retry_in = ?retry, serving = ?serving, "ACME order failed: the current certificate keeps serving");
        self.alerts.emit(Alert::new(
            AlertKind::AcmeFailed,
            "warning",
            format!(
                "ACME order for listener {} failed, retrying in {}s: {e}",
                m.listener,
                retry.as_secs()
            ),
            json!({
                "listener": m.listener,
                "domains": m.settings.domains,
                "error": e.to_string(),
                "serving_until": serving,
                "retry_seconds": retry.as_secs(),
            }),
        ));
    }

    /// Order a certificate for `m` and serve it.
    async fn order(&self, m: &Managed) -> Result<(), AcmeError> {
        let stored = store::read_account(&m.paths);
        let (account, new_creds) = order::account(&m.settings, stored.as_deref()).await?;
        if let Some(json) = new_creds {
            store::write_private(&m.paths.account, json.as_bytes())?;
        }
        let shared = self.fleet.as_ref().map(|f| f.backend());
        let (chain, key) = order::obtain(&account, &m.settings, &self.challenges, shared).await?;
        let pair = store::save_certificate(&m.paths, &chain, &key)?;
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        m.install(pair, "obtained");
        Ok(())
    }
}

/// `base` doubled per earlier failure, capped, with up to a fifth added at random (so that
/// many nodes or listeners do not retry in step).
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(12))
        .min(MAX_BACKOFF);
    base + jitter(base / 5)
}

fn jitter(up_to: Duration) -> Duration {
    Duration::from_millis(fastrand::u64(0..=up_to.as_millis() as u64))
}

/// The life of one managed listener: renew when due (on this node, or through the fleet's
/// leader), else sleep until then.
async fn run(m: Arc<Managed>, acme: Arc<Acme>) {
    let mut failures = 0u32;
    let mut retry_at = None;
    loop {
        let wait = match &acme.fleet {
            Some(fleet) => fleet.step(&m, &acme, &mut failures, &mut retry_at).await,
            None => local_step(&m, &acme, &mut failures).await,
        };
        tokio::time::sleep(wait).await;
    }
}

/// One look at `m` without a fleet: order if due; answers how long to sleep.
async fn local_step(m: &Managed, acme: &Acme, failures: &mut u32) -> Duration {
    let due = m.due_in(unix_now());
    if !due.is_zero() {
        // Spread renewals of certificates issued together (up to 1% of the wait).
        return due.min(MAX_SLEEP) + jitter(due.min(MAX_SLEEP) / 100);
    }
    match acme.order(m).await {
        Ok(()) => {
            *failures = 0;
            Duration::ZERO
        }
        Err(e) => {
            *failures += 1;
            let retry = backoff(*failures);
            acme.failed(m, &e, retry);
            retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for (failures, base) in [(1, 10), (2, 20), (3, 40), (20, 3600)] {
            let b = backoff(failures);
            let base = Duration::from_secs(base);
            assert!(b >= base && b <= base + base / 5, "{failures}: {b:?}");
        }
    }
}
