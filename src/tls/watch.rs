//! Certificate file watching: inotify (via `notify`) on the directories holding certificates
//! and keys, debounced, plus a slow poll that catches what events miss (network file
//! systems, missed renames). Either one only triggers a fingerprint comparison; nothing is
//! reloaded unless the bytes changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// How often the files are compared even without events.
const POLL: Duration = Duration::from_secs(10);
/// Quiet time after the last event before reloading (a cert and its key are often written
/// one after the other).
const SETTLE: Duration = Duration::from_millis(250);
/// Longest wait for quiet while events keep coming.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Watches directories and calls `on_change` from its own thread.
pub(crate) struct Watcher {
    inner: Option<RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

impl Watcher {
    /// Start the thread; `on_change` runs after settled events and every `POLL`.
    pub fn start(on_change: fn()) -> Watcher {
        let (tx, rx) = mpsc::channel::<()>();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if relevant(&event.kind) {
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "certificate file events unavailable: polling every {POLL:?}")
        })
        .ok();
        let spawned = std::thread::Builder::new()
            .name("autolb-cert-watch".into())
            .spawn(move || run(rx, on_change));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the certificate watcher thread");
        }
        Watcher {
            inner,
            dirs: BTreeSet::new(),
        }
    }

    /// Watch the directories of `files` (and stop watching the others). Directories, not
    /// files: certificates are often replaced by a rename or a symlink swap.
    pub fn set_paths(&mut self, files: &[PathBuf]) {
        let wanted: BTreeSet<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
        let Some(inner) = self.inner.as_mut() else {
            self.dirs = wanted;
            return;
        };
        for gone in self.dirs.difference(&wanted) {
            let _ = inner.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = inner.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch certificate directory: polling it every {POLL:?}");
            }
        }
        self.dirs = wanted;
    }
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn run(rx: mpsc::Receiver<()>, on_change: fn()) {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(()) => {
                let started = Instant::now();
                while started.elapsed() < MAX_SETTLE {
                    match rx.recv_timeout(SETTLE) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                on_change();
            }
            Err(RecvTimeoutError::Timeout) => on_change(),
            // The event source is gone (no inotify): keep polling.
            Err(RecvTimeoutError::Disconnected) => loop {
                std::thread::sleep(POLL);
                on_change();
            },
        }
    }
}
