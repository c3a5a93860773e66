//! The shared HTTP/2 connections of one backend on one worker, oldest first. A request
//! takes a stream on the first connection below the backend's
//! SETTINGS_MAX_CONCURRENT_STREAMS (`h2_peer`); when every one is full, the caller opens
//! another (one at a time, `h2_open`) rather than queueing on a full one, as HAProxy and
//! Envoy do. Filling the oldest first leaves the extra ones of a burst unused, and a
//! connection without streams for the pool's idle timeout is closed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::time::Instant;

use super::h2_peer::{Peer, Slot};
use super::RequestBody;

/// One shared connection: a handle on it, its streams, its settings' generation, and when
/// it last took a stream.
struct Shared {
    tx: http2::SendRequest<RequestBody>,
    peer: Arc<Peer>,
    generation: u64,
    used: Instant,
}

/// Only its own worker uses it, so its lock is never contended.
#[derive(Default)]
pub(super) struct H2Conns {
    conns: Mutex<Vec<Shared>>,
}

impl H2Conns {
    fn lock(&self) -> MutexGuard<'_, Vec<Shared>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream on the oldest open connection of `generation` with room for one. On the
    /// way, drops (closes) the connections that are closed, of an older generation, or
    /// without streams for `max_idle`.
    pub(super) fn take(
        &self,
        max_idle: Duration,
        generation: u64,
    ) -> Option<(http2::SendRequest<RequestBody>, Slot)> {
        let now = Instant::now();
        let mut conns = self.lock();
        conns.retain(|c| {
            let idle = c
                .peer
                .idle_since()
                .is_some_and(|since| now.saturating_duration_since(since.max(c.used)) >= max_idle);
            let keep = !idle && c.generation == generation && !c.tx.is_closed();
            if !keep {
                tracing::debug!(
                    idle,
                    closed = c.tx.is_closed(),
                    "shared HTTP/2 connection dropped"
                );
            }
            keep
        });
        conns.iter_mut().find_map(|c| {
            let slot = c.peer.try_slot()?;
            c.used = now;
            Some((c.tx.clone(), slot))
        })
    }

    /// Share a new connection (its opener holds a stream on it already).
    pub(super) fn add(
        &self,
        tx: http2::SendRequest<RequestBody>,
        peer: Arc<Peer>,
        generation: u64,
    ) {
        self.lock().push(Shared {
            tx,
            peer,
            generation,
            used: Instant::now(),
        });
    }

    /// Connections without a stream in flight.
    pub(super) fn idle_count(&self) -> usize {
        self.lock().iter().filter(|c| c.peer.active() == 0).count()
    }
}
