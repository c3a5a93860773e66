//! A server's WebSocket tunnels as a whole: how many are open (a graceful shutdown waits
//! for them) and the signal that closes them all with 1001 "going away". Owned by the
//! `Runtime`, so two servers in one process close and count only their own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Tunnels {
    /// Woken when the server shuts down: every tunnel closes with 1001.
    shutdown: Notify,
    /// Set (for good) once the server shuts down: tunnels handed over later close at once.
    shutting_down: AtomicBool,
    /// Open tunnels.
    open: AtomicUsize,
}

impl Tunnels {
    /// Close every tunnel with 1001 "going away" (graceful shutdown), and those opened from
    /// now on as soon as they start.
    pub fn close_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }

    /// Whether `close_all` was called.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Resolves at `close_all` (enable it before checking `shutting_down`, so no call is
    /// missed between the two).
    pub fn closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shutdown.notified()
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed_one(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}
