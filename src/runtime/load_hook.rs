//! Who hears of a backend's load changes: a balancer that keeps its backends ordered by load
//! (`balance::least_conn`) registers itself in each backend's `BackendStats`, and the code
//! that starts or ends a request, a WebSocket or a TCP connection reports the change
//! (`BackendStats::load_changed`).

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
pub struct LoadHookSlot(ArcSwapOption<LoadHook>);

impl LoadHookSlot {
    pub fn install(&self, watcher: Weak<dyn LoadWatcher>, index: usize) {
        self.0.store(Some(Arc::new(LoadHook { watcher, index })));
    }

    pub fn clear(&self) {
        if self.0.load().is_some() {
            self.0.store(None);
        }
    }

    /// Tell the watcher, if any (one atomic load when there is none).
    #[inline]
    pub fn notify(&self) {
        let hook = self.0.load();
        if let Some(h) = hook.as_ref() {
            if let Some(w) = h.watcher.upgrade() {
                w.load_changed(h.index);
            }
        }
    }
}
