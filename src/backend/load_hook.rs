//! Who hears of a backend's load changes: a balancer that keeps its backends ordered by load
//! (`balance::least_conn`) registers itself in each backend's `BackendStats`, and the code
//! that starts or ends a request, a WebSocket or a TCP connection reports the change
//! (`BackendStats::load_changed`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;

/// A structure ordered by backends' loads.
pub trait LoadWatcher: Send + Sync + std::fmt::Debug {
    /// The load of backend `index` (its position in the watcher's pool) changed.
    fn load_changed(&self, index: usize);
}

/// Where one backend's changes go: the newest snapshot's watcher of its pool.
#[derive(Debug)]
pub struct LoadHook {
    watcher: Weak<dyn LoadWatcher>,
    index: usize,
}

/// The hook slot of one backend (kept across reloads with its stats; each new snapshot's
/// balancer installs itself, or clears it when its algorithm keeps no order).
#[derive(Debug, Default)]
pub struct LoadHookSlot {
    hook: ArcSwapOption<LoadHook>,
    /// Whether `hook` is set: the one relaxed load a backend of a pool without a watcher
    /// pays per change.
    watched: AtomicBool,
}

impl LoadHookSlot {
    pub fn install(&self, watcher: Weak<dyn LoadWatcher>, index: usize) {
        self.hook.store(Some(Arc::new(LoadHook { watcher, index })));
        self.watched.store(true, Ordering::Release);
    }

    pub fn clear(&self) {
        if self.watched.swap(false, Ordering::AcqRel) {
            self.hook.store(None);
        }
    }

    /// Tell the watcher, if any (one atomic load when there is none).
    #[inline]
    pub fn notify(&self) {
        if !self.watched.load(Ordering::Relaxed) {
            return;
        }
        let hook = self.hook.load();
        if let Some(h) = hook.as_ref() {
            if let Some(w) = h.watcher.upgrade() {
                w.load_changed(h.index);
            }
        }
    }
}
