//! What a data-plane thread knows about itself: its worker index (which per-worker idle
//! pool it uses) and the CPU-sharing yielder (`cpu_share`). Thread-locals only, below every
//! other module: the proxy and l4 note their work here without importing the server, which
//! sets the index and starts the yielder on each worker thread.

pub mod cpu_share;

use std::cell::Cell;

thread_local! {
    static WORKER_ID: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread (0 outside workers).
#[inline]
pub fn worker_id() -> usize {
    WORKER_ID.with(|w| w.get())
}

/// Set by the server on each worker thread as it starts.
pub fn set_worker_id(id: usize) {
    WORKER_ID.with(|w| w.set(id));
}
