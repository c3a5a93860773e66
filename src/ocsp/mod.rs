//! OCSP stapling (`tls.ocsp_stapling: true`): for every certificate an https listener serves
//! from its files, a response is fetched from the responder (`ocsp_responder`, else the
//! certificate's Authority Information Access URL), checked (`verify`) and stapled to the
//! certificate (rustls `CertifiedKey::ocsp`), refreshed at the middle of its validity with
//! jitter (`schedule`), retried with backoff on failure. A responder that is down leaves the
//! certificate served without a staple, or with the last good one while it is valid; a
//! response that is not `good`, does not verify against the issuer, or is out of date is
//! never stapled. Counted in `autolb_ocsp_*`; failures raise an `ocsp_failed` alert.
//!
//! The OCSP request and response DER is RustCrypto's `x509-ocsp` (with `x509-cert`/`der`);
//! certificates are read and signatures verified by `x509-parser` (on ring).

mod fetch;
mod schedule;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::alerts::{Alert, AlertQueue};
use crate::config::{AlertKind, Protocol};
use crate::prom::{header, label};
use crate::runtime::Runtime;
use crate::tls::TlsListener;
use schedule::{Held, Slot};

/// Why no staple could be had for a certificate.
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    #[error("the certificate file has no issuer certificate after the leaf: OCSP needs it")]
    NoIssuer,
    #[error("the certificate names no OCSP responder (no AIA OCSP URL): set ocsp_responder")]
    NoResponder,
    #[error("unsupported OCSP responder URL {0:?} (only http://)")]
    Url(String),
    #[error("bad certificate: {0}")]
    Certificate(String),
    #[error("responder unreachable: {0}")]
    Unreachable(String),
    #[error("responder answered HTTP {0}")]
    HttpStatus(u16),
    #[error("malformed OCSP data: {0}")]
    Der(String),
    #[error("responder refused the request: {0}")]
    Responder(String),
    #[error("the response is not about this certificate")]
    NotThisCertificate,
    #[error("the response's signature does not verify against the issuer")]
    BadSignature,
    #[error("the certificate is revoked (since {0})")]
    Revoked(String),
    #[error("the responder does not know the certificate (status unknown)")]
    Unknown,
    #[error("the response is expired (nextUpdate has passed)")]
    Expired,
    #[error("the response is not valid yet (thisUpdate in the future)")]
    NotYetValid,
}

impl OcspError {
    /// The `result` label of `autolb_ocsp_responses_total`.
    fn result(&self) -> &'static str {
        match self {
            OcspError::Unreachable(_) | OcspError::HttpStatus(_) => "unreachable",
            OcspError::Revoked(_) => "revoked",
            OcspError::Unknown => "unknown",
            _ => "invalid",
        }
    }
}

/// How often the served certificates are looked at again (reloads, new listeners).
const POLL: Duration = Duration::from_secs(5);

/// One served certificate's state.
struct Entry {
    target: Result<fetch::Target, OcspError>,
    responder: Option<String>,
    slot: Slot,
}

impl Entry {
    fn new(
        listener: &str,
        chain: &[rustls_pki_types::CertificateDer<'static>],
        settings: &crate::config::OcspStapling,
    ) -> Entry {
        let target = fetch::target(chain, settings.responder.as_deref());
        if let Err(e) = &target {
            tracing::warn!(listener, error = %e, "OCSP stapling not possible for this certificate");
        }
        Entry {
            target,
            responder: settings.responder.clone(),
            slot: Slot::new(Instant::now()),
        }
    }
}

/// What `/metrics` shows of one certificate.
#[derive(Clone)]
struct Shown {
    name: String,
    next_update: Option<i64>,
    stapled: bool,
}

#[derive(Default)]
struct Stats {
    /// (listener, result) -> responses.
    responses: BTreeMap<(String, &'static str), u64>,
    /// (listener, leaf) -> what is served.
    served: BTreeMap<(String, Vec<u8>), Shown>,
}

/// The OCSP stapling service of one server.
pub struct Ocsp {
    stats: Mutex<Stats>,
    /// The server's alert queue (`ocsp_failed`).
    alerts: Arc<AlertQueue>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Ocsp {
    /// Staple the certificates of `tls`'s listeners that have `ocsp_stapling` in the running
    /// config (read again at every pass, so reloads apply). Runs until `tls` is dropped.
    pub fn start(runtime: Arc<Runtime>, tls: &Arc<crate::tls::Store>) -> Arc<Ocsp> {
        let ocsp = Arc::new(Ocsp {
            stats: Mutex::new(Stats::default()),
            alerts: runtime.alerts.clone(),
        });
        tokio::spawn(run(ocsp.clone(), runtime, Arc::downgrade(tls)));
        ocsp
    }

    fn count(&self, listener: &str, result: &'static str) {
        if let Ok(mut s) = self.stats.lock() {
            *s.responses
                .entry((listener.to_string(), result))
                .or_default() += 1;
        }
    }

    fn show(&self, listener: &str, leaf: &[u8], shown: Option<Shown>) {
        if let Ok(mut s) = self.stats.lock() {
            let key = (listener.to_string(), leaf.to_vec());
            match shown {
                Some(v) => s.served.insert(key, v),
                None => s.served.remove(&key),
            };
        }
    }

    /// Append `autolb_ocsp_responses_total{listener,result}`, `autolb_ocsp_stapled` and
    /// `autolb_ocsp_staple_expiry_timestamp_seconds` per certificate.
    pub fn render_metrics(&self, out: &mut String) {
        let Ok(s) = self.stats.lock() else {
            return;
        };
        if s.responses.is_empty() && s.served.is_empty() {
            return;
        }
        header(
            out,
            "ocsp_responses_total",
            "counter",
            "OCSP fetches by result: good (stapled), revoked, unknown, invalid (refused), unreachable.",
        );
        for ((listener, result), n) in &s.responses {
            let _ = writeln!(
                out,
                "autolb_ocsp_responses_total{{listener=\"{}\",result=\"{result}\"}} {n}",
                label(listener)
            );
        }
        header(
            out,
            "ocsp_stapled",
            "gauge",
            "1 when a served certificate has an OCSP staple, else 0.",
        );
        for ((listener, _), shown) in &s.served {
            let _ = writeln!(
                out,
                "autolb_ocsp_stapled{{listener=\"{}\",certificate=\"{}\"}} {}",
                label(listener),
                label(&shown.name),
                u8::from(shown.stapled)
            );
        }
        header(
            out,
            "ocsp_staple_expiry_timestamp_seconds",
            "gauge",
            "nextUpdate of the OCSP staple served for a certificate, in Unix seconds.",
        );
        for ((listener, _), shown) in &s.served {
            if let (true, Some(n)) = (shown.stapled, shown.next_update) {
                let _ = writeln!(
                    out,
                    "autolb_ocsp_staple_expiry_timestamp_seconds{{listener=\"{}\",certificate=\"{}\"}} {n}",
                    label(listener),
                    label(&shown.name)
                );
            }
        }
    }

    /// Fetch, check and staple (or not) one certificate's response.
    async fn refresh(&self, client: &fetch::Client, listener: &TlsListener, entry: &mut Entry) {
        let now = Instant::now();
        let jitter = fastrand::f64();
        let target = match &entry.target {
            Ok(t) => t,
            Err(_) => return,
        };
        let outcome = match fetch::request(target) {
            Ok(body) => match fetch::post(client, &target.url, body).await {
                Ok(der) => verify::check(&der, target, unix_now()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let name = &listener.name;
        let cert = &target.name;
        match outcome {
            Ok(good) => {
                let next_update = good.next_update;
                listener.staple(&target.leaf, Some(Arc::from(good.der)));
                if entry.slot.failures > 0 || entry.slot.revoked {
                    tracing::info!(listener = %name, certificate = %cert, "OCSP staple restored");
                } else if entry.slot.held.is_none() {
                    tracing::info!(listener = %name, certificate = %cert, next_update = ?next_update, "OCSP response stapled");
                }
                let held = Held {
                    this_update: good.this_update,
                    next_update,
                };
                entry.slot.good(held, now, unix_now(), jitter);
                self.count(name, "good");
            }
            Err(e @ OcspError::Revoked(_)) => {
                listener.staple(&target.leaf, None);
                if !entry.slot.revoked {
                    tracing::error!(listener = %name, certificate = %cert, error = %e, "OCSP: certificate revoked: served without a staple; replace it");
                    alert(&self.alerts, name, cert, &e, false);
                }
                entry.slot.revoked(now);
                self.count(name, "revoked");
            }
            Err(e) => {
                let keep = entry.slot.failed(now, unix_now(), jitter);
                if !keep {
                    listener.staple(&target.leaf, None);
                }
                let retry = entry.slot.next_attempt.saturating_duration_since(now);
                tracing::warn!(listener = %name, certificate = %cert, error = %e, retry_in = ?retry, keeping_staple = keep, "OCSP fetch failed");
                if entry.slot.failures == 1 {
                    alert(&self.alerts, name, cert, &e, keep);
                }
                self.count(name, e.result());
            }
        }
        let stapled = entry.slot.held.is_some();
        let next_update = entry.slot.held.as_ref().and_then(|h| h.next_update);
        self.show(
            name,
            &target.leaf,
            Some(Shown {
                name: cert.clone(),
                next_update,
                stapled,
            }),
        );
    }
}

fn alert(queue: &AlertQueue, listener: &str, cert: &str, e: &OcspError, keeping: bool) {
    queue.emit(Alert::new(
        AlertKind::OcspFailed,
        "warning",
        format!("OCSP stapling for {cert} on listener {listener} failed: {e}"),
        json!({
            "listener": listener,
            "certificate": cert,
            "error": e.to_string(),
            "keeping_staple": keeping,
        }),
    ));
}

/// The service's loop: look at every served certificate, refresh those due, sleep until
/// the next is due (at most `POLL`).
async fn run(ocsp: Arc<Ocsp>, runtime: Arc<Runtime>, tls: Weak<crate::tls::Store>) {
    let client = fetch::client();
    let mut entries: HashMap<(String, Vec<u8>), Entry> = HashMap::new();
    loop {
        let Some(store) = tls.upgrade() else {
            return;
        };
        let snapshot = runtime.snapshot();
        let mut seen = HashSet::new();
        for l in &snapshot.config.listeners {
            let settings = match (&l.protocol, &l.tls) {
                (Protocol::Https, Some(t)) => t.ocsp.as_ref(),
                _ => None,
            };
            let (Some(settings), Some(listener)) = (settings, store.listener(&l.name)) else {
                continue;
            };
            for chain in listener.chains() {
                let Some(leaf) = chain.first() else {
                    continue;
                };
                let key = (l.name.clone(), leaf.to_vec());
                let entry = entries
                    .entry(key.clone())
                    .or_insert_with(|| Entry::new(&l.name, &chain, settings));
                if entry.responder != settings.responder {
                    *entry = Entry::new(&l.name, &chain, settings);
                }
                seen.insert(key);
                if entry.target.is_ok() && entry.slot.due(Instant::now()) {
                    ocsp.refresh(&client, &listener, entry).await;
                }
                let expired = entry
                    .slot
                    .held
                    .as_ref()
                    .is_some_and(|h| !h.valid(unix_now()));
                if expired {
                    entry.slot.held = None;
                    listener.staple(leaf, None);
                    tracing::warn!(listener = %l.name, "OCSP staple expired: served without one");
                }
            }
        }
        // Certificates no longer served, or listeners whose stapling was turned off.
        entries.retain(|(name, leaf), _| {
            let keep = seen.contains(&(name.clone(), leaf.clone()));
            if !keep {
                if let Some(listener) = store.listener(name) {
                    listener.staple(leaf, None);
                }
                ocsp.show(name, leaf, None);
            }
            keep
        });
        drop(store);
        let next = entries
            .values()
            .filter(|e| e.target.is_ok())
            .map(|e| e.slot.next_attempt)
            .min()
            .unwrap_or_else(|| Instant::now() + POLL)
            .min(Instant::now() + POLL);
        tokio::time::sleep_until(next).await;
    }
}
