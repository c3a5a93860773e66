//! Reload: three triggers (the config file changing, SIGHUP, `POST /config/reload`) send
//! requests to one apply path, which validates the whole new config first and changes
//! nothing when it is invalid.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::Server;
use crate::config;
use crate::config::watch::FileWatcher;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    File,
    Signal,
    Admin,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        }
    }
}

/// The answer of one reload attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    /// Refused although valid: it could not be applied (a new listener cannot bind).
    pub unappliable: bool,
    pub changes: Vec<String>,
    pub errors: Vec<String>,
    pub generation: u64,
    pub hash: String,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        if self.ok {
            json!({
                "result": "success",
                "changes": self.changes,
                "generation": self.generation,
                "config_hash": self.hash,
            })
        } else if self.unappliable {
            json!({ "error": "cannot apply the config: nothing changed", "errors": self.errors })
        } else {
            json!({ "error": "invalid config: nothing changed", "errors": self.errors })
        }
    }

    /// The admin API's status: 200, 400 for an invalid config, 409 for one that cannot be
    /// applied as things are (an address in use).
    pub fn status(&self) -> http::StatusCode {
        if self.ok {
            http::StatusCode::OK
        } else if self.unappliable {
            http::StatusCode::CONFLICT
        } else {
            http::StatusCode::BAD_REQUEST
        }
    }
}

/// A reload request, answered on `reply` when given.
pub struct Request {
    pub trigger: Trigger,
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// Where triggers send their requests.
#[derive(Clone)]
pub struct Handle(pub mpsc::Sender<Request>);

impl Handle {
    /// Ask for a reload and wait for its outcome.
    pub async fn reload(&self, trigger: Trigger) -> Option<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Request {
                trigger,
                reply: Some(tx),
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// The last reload, for `/health`.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub at_ms: u64,
    pub trigger: &'static str,
    pub ok: bool,
    pub errors: usize,
}

/// Hash of a config file's bytes (hex), as `/health` shows it.
pub fn file_hash(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|text| config::text_hash(&text))
        .unwrap_or_else(|_| "unreadable".into())
}

impl Server {
    /// The one apply path: load and validate everything, then swap the snapshot, the
    /// certificates and the autoscaler's settings.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let rt = &self.runtime;
        let old = rt.snapshot();
        let path: PathBuf = old.config.source.clone();
        let refused = |errors: Vec<String>, unappliable: bool| {
            rt.reloads_failed.fetch_add(1, Ordering::Relaxed);
            for e in &errors {
                tracing::error!(trigger = trigger.name(), "reload refused: {e}");
            }
            self.record(trigger, false, &[], &errors, old.generation);
            crate::alerts::reload_failed(&self.runtime.alerts, trigger.name(), &errors);
            Outcome {
                ok: false,
                unappliable,
                changes: Vec::new(),
                errors,
                generation: old.generation,
                hash: self.config_hash(),
            }
        };
        let cfg = match crate::tls::config_files::load(&path) {
            Ok(c) => c,
            Err(errors) => return refused(errors.0.iter().map(|e| e.to_string()).collect(), false),
        };
        // Listeners the new config adds or moves are bound first: one that cannot bind
        // (its address in use) refuses the reload, and the running ones go on serving.
        let bound = match self.bind_listeners(&cfg) {
            Ok(b) => b,
            Err(errors) => return refused(errors, true),
        };
        let mut changes = config::diff::diff(&old.config, &cfg);
        match self.tls.reload_certificates(&cfg) {
            Ok(report) => {
                for l in report.changed {
                    changes.push(format!("listener {l}: certificates reloaded"));
                }
                for l in report.added {
                    changes.push(format!("listener {l}: TLS set up"));
                }
                for l in report.removed {
                    changes.push(format!("listener {l}: TLS removed"));
                }
            }
            Err(errors) => return refused(errors.0.iter().map(|e| e.to_string()).collect(), false),
        }
        let hash = cfg.hash.clone();
        let next = rt.apply(cfg);
        self.autoscaler.reconcile();
        changes.extend(self.start_listeners(bound));
        if changes.is_empty() {
            tracing::info!(
                trigger = trigger.name(),
                generation = next.generation,
                "reload: no changes"
            );
        }
        for c in &changes {
            tracing::info!(
                trigger = trigger.name(),
                generation = next.generation,
                "reload: {c}"
            );
        }
        self.record(trigger, true, &changes, &[], next.generation);
        Outcome {
            ok: true,
            unappliable: false,
            changes,
            errors: Vec::new(),
            generation: next.generation,
            hash,
        }
    }

    fn record(
        &self,
        trigger: Trigger,
        ok: bool,
        changes: &[String],
        errors: &[String],
        generation: u64,
    ) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Ok(mut r) = self.reload_state.lock() {
            r.last = Some(Record {
                at_ms,
                trigger: trigger.name(),
                ok,
                errors: errors.len(),
            });
            let keep = |v: &[String]| v.iter().take(HISTORY_LINES).cloned().collect();
            if r.history.len() == HISTORY {
                r.history.pop_front();
            }
            r.history.push_back(HistoryEntry {
                record: Record {
                    at_ms,
                    trigger: trigger.name(),
                    ok,
                    errors: errors.len(),
                },
                generation,
                hash: self.config_hash(),
                changes: keep(changes),
                errors: keep(errors),
            });
        }
    }

    /// The config hash of the running config (`Config::hash`).
    pub fn config_hash(&self) -> String {
        self.runtime.snapshot().config.hash.clone()
    }
}

/// Reloads kept in the history, and the changes or errors kept of each.
const HISTORY: usize = 50;
const HISTORY_LINES: usize = 20;

/// One reload of the history: what it changed or why it was refused.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub record: Record,
    /// The generation and config hash running after it.
    pub generation: u64,
    pub hash: String,
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

/// The last reload, and the recent ones (refused ones included).
#[derive(Debug, Default)]
pub struct ReloadState {
    pub last: Option<Record>,
    pub history: std::collections::VecDeque<HistoryEntry>,
}

impl ReloadState {
    pub fn to_json(&self) -> Value {
        json!({
            "last_reload": self.last.as_ref().map(|r| json!({
                "at_ms": r.at_ms,
                "trigger": r.trigger,
                "result": if r.ok { "success" } else { "failure" },
                "errors": r.errors,
            })),
        })
    }

    /// The recent reloads, newest first (for the dashboard's config view).
    pub fn history_json(&self) -> Value {
        let list: Vec<Value> = self
            .history
            .iter()
            .rev()
            .map(|h| {
                json!({
                    "at_ms": h.record.at_ms,
                    "trigger": h.record.trigger,
                    "result": if h.record.ok { "success" } else { "failure" },
                    "generation": h.generation,
                    "config_hash": h.hash,
                    "changes": h.changes,
                    "errors": h.errors,
                    "error_count": h.record.errors,
                })
            })
            .collect();
        Value::Array(list)
    }
}

/// Watch the config file through whatever symlinks lead to it (`config::watch`) and ask
/// for a reload once per change of its bytes.
pub fn watch(path: &Path, handle: Handle) -> std::io::Result<FileWatcher> {
    FileWatcher::start(
        "config",
        vec![path.to_path_buf()],
        None,
        Box::new(move || {
            // The watcher's own thread, outside the runtime: a blocking send is fine.
            let _ = handle.0.blocking_send(Request {
                trigger: Trigger::File,
                reply: None,
            });
        }),
    )
}
