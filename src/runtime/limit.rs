//! A pool's concurrency limit (`limits: {max_inflight, max_queue, queue_timeout}`): the
//! slots (a tokio `Semaphore`, FIFO for its waiters, shared by every worker), the bounded
//! queue's counters, and how `max_inflight` changes on a reload without losing a slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::PoolLimits;

/// The limiter state of one pool, carried across reloads by pool name.
#[derive(Debug)]
pub struct Limiter {
    slots: Semaphore,
    /// The configured `max_inflight` (written only by the snapshot builder).
    limit: AtomicUsize,
    /// Slots still held beyond a lowered limit: each is forgotten when it comes back.
    debt: AtomicUsize,
    /// Requests waiting for a slot now.
    pub queued: AtomicU64,
    /// Refused at once: the queue was full.
    pub refused_full: AtomicU64,
    /// Refused after waiting `queue_timeout`.
    pub refused_timeout: AtomicU64,
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("queue full")]
    Full,
    #[error("queue timeout")]
    Timeout,
}

impl Refused {
    /// The `reason` label of `autolb_pool_queue_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::Timeout => "timeout",
        }
    }
}

/// One request's slot: given back (or forgotten, after a lowered limit) when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Limiter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Counts a waiting request while it waits (also when its client goes away).
struct Waiting<'a>(&'a Limiter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    fn new(limit: usize) -> Limiter {
        Limiter {
            slots: Semaphore::new(limit),
            limit: AtomicUsize::new(limit),
            debt: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_timeout: AtomicU64::new(0),
        }
    }

    /// Requests holding a slot now.
    pub fn inflight(&self) -> u64 {
        let circulating = self.limit.load(Ordering::Relaxed) + self.debt.load(Ordering::Relaxed);
        circulating.saturating_sub(self.slots.available_permits()) as u64
    }

    /// A slot at once if one is free (one CAS, no lock), else `None`.
    pub fn try_enter(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.slots.try_acquire().ok()?;
        permit.forget();
        Some(Slot(self.clone()))
    }

    /// Wait for a slot, first in first out, behind at most `max_queue` others and for at most
    /// `queue_timeout`.
    pub async fn enter(self: &Arc<Self>, limits: &PoolLimits) -> Result<Slot, Refused> {
        if let Some(slot) = self.try_enter() {
            return Ok(slot);
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= u64::from(limits.max_queue) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        let _waiting = Waiting(self);
        match tokio::time::timeout(limits.queue_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(Slot(self.clone()))
            }
            // The semaphore is never closed; treat it like a full queue if it were.
            Ok(Err(_)) => {
                self.refused_full.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Full)
            }
            Err(_) => {
                self.refused_timeout.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Timeout)
            }
        }
    }

    fn release(&self) {
        let mut debt = self.debt.load(Ordering::Acquire);
        while debt > 0 {
            match self.debt.compare_exchange_weak(
                debt,
                debt - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => debt = now,
            }
        }
        self.slots.add_permits(1);
    }

    /// A new `max_inflight`: more slots at once; fewer as soon as held ones come back.
    fn resize(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            let mut add = limit - old;
            let mut debt = self.debt.load(Ordering::Acquire);
            while debt > 0 && add > 0 {
                let pay = debt.min(add);
                match self.debt.compare_exchange_weak(
                    debt,
                    debt - pay,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => add -= pay,
                    Err(now) => debt = now,
                }
            }
            self.slots.add_permits(add);
        } else if limit < old {
            let cut = old - limit;
            let gone = self.slots.forget_permits(cut);
            self.debt.fetch_add(cut - gone, Ordering::AcqRel);
        }
    }
}

/// A pool's `limits:` in one snapshot, over the limiter shared with the other snapshots.
#[derive(Debug, Clone)]
pub struct Queue {
    pub limits: PoolLimits,
    pub limiter: Arc<Limiter>,
}

impl Queue {
    /// The queue of a pool built from `limits`, reusing (and resizing) the previous
    /// snapshot's limiter of the same pool.
    pub fn build(limits: Option<&PoolLimits>, previous: Option<&Queue>) -> Option<Queue> {
        let limits = *limits?;
        let max = limits.max_inflight as usize;
        let limiter = match previous {
            Some(q) => {
                q.limiter.resize(max);
                q.limiter.clone()
            }
            None => Arc::new(Limiter::new(max)),
        };
        Some(Queue { limits, limiter })
    }

    /// `/loadbalancer/status`: what the pool's limit is and how it is used now.
    pub fn status(&self) -> serde_json::Value {
        let l = &self.limiter;
        serde_json::json!({
            "inflight": l.inflight(),
            "queued": l.queued.load(Ordering::Relaxed),
            "max_inflight": self.limits.max_inflight,
            "max_queue": self.limits.max_queue,
            "queue_timeout_ms": self.limits.queue_timeout.as_millis() as u64,
            "refused": {
                "full": l.refused_full.load(Ordering::Relaxed),
                "timeout": l.refused_timeout.load(Ordering::Relaxed),
            },
        })
    }
}

impl super::Pool {
    /// Requests waiting in the pool's queue for a slot (0 without `limits:`).
    pub fn queued(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.limiter.queued.load(Ordering::Relaxed))
    }
}

/// `autolb_pool_queued{pool}` and `autolb_pool_queue_refused_total{pool,reason}` of the pools
/// with `limits:`.
pub fn render_metrics(out: &mut String, snap: &super::Snapshot) {
    use std::fmt::Write;
    let limited: Vec<_> = snap
        .pools
        .iter()
        .filter_map(|p| Some((crate::prom::label(&p.name), p.queue.as_ref()?)))
        .collect();
    if limited.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP autolb_pool_queued Requests waiting for a slot of the pool (limits.max_inflight)."
    );
    let _ = writeln!(out, "# TYPE autolb_pool_queued gauge");
    for (name, q) in &limited {
        let n = q.limiter.queued.load(Ordering::Relaxed);
        let _ = writeln!(out, "autolb_pool_queued{{pool=\"{name}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP autolb_pool_queue_refused_total Requests refused with 503 by the pool's queue (full: at once, timeout: after queue_timeout)."
    );
    let _ = writeln!(out, "# TYPE autolb_pool_queue_refused_total counter");
    for (name, q) in &limited {
        for (reason, n) in [
            (Refused::Full.reason(), &q.limiter.refused_full),
            (Refused::Timeout.reason(), &q.limiter.refused_timeout),
        ] {
            let _ = writeln!(
                out,
                "autolb_pool_queue_refused_total{{pool=\"{name}\",reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max_inflight: u32, max_queue: u32) -> PoolLimits {
        PoolLimits {
            max_inflight,
            max_queue,
            queue_timeout: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn slots_queue_and_refuse() {
        let q = Queue::build(Some(&limits(1, 1)), None).expect("queue");
        let l = &q.limiter;
        let first = l.try_enter().expect("a free slot");
        assert!(l.try_enter().is_none());
        assert_eq!(l.inflight(), 1);
        // One waits; the next is refused at once.
        let waiter = {
            let (l, lim) = (l.clone(), q.limits);
            tokio::spawn(async move { l.enter(&lim).await.map(drop) })
        };
        while l.queued.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.enter(&q.limits).await.err(), Some(Refused::Full));
        drop(first);
        assert_eq!(waiter.await.expect("join"), Ok(()));
        // Nobody releases now: the waiter times out.
        let held = l.try_enter().expect("free again");
        assert_eq!(l.enter(&q.limits).await.err(), Some(Refused::Timeout));
        drop(held);
        assert_eq!(
            (
                l.refused_full.load(Ordering::Relaxed),
                l.refused_timeout.load(Ordering::Relaxed),
                l.queued.load(Ordering::Relaxed),
                l.inflight()
            ),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn resizing_keeps_held_slots_counted() {
        let q = Queue::build(Some(&limits(4, 0)), None).expect("queue");
        let l = q.limiter.clone();
        let held: Vec<Slot> = (0..4).filter_map(|_| l.try_enter()).collect();
        assert_eq!(held.len(), 4);
        // Lowered to 2 while 4 are held: nothing new until two have come back.
        let q2 = Queue::build(Some(&limits(2, 0)), Some(&q)).expect("queue");
        assert!(Arc::ptr_eq(&q2.limiter, &l));
        assert_eq!(l.inflight(), 4);
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert!(l.try_enter().is_none());
        assert_eq!(l.inflight(), 2);
        drop(held.next());
        let again = l.try_enter().expect("one free of 2");
        assert!(l.try_enter().is_none());
        // Raised to 3: one more at once.
        Queue::build(Some(&limits(3, 0)), Some(&q2)).expect("queue");
        let third = l.try_enter().expect("raised");
        assert!(l.try_enter().is_none());
        drop((again, third, held));
        assert_eq!(l.inflight(), 0);
        assert_eq!(l.slots.available_permits(), 3);
    }

    #[test]
    fn raising_pays_the_debt_first() {
        let q = Queue::build(Some(&limits(3, 0)), None).expect("queue");
        let l = q.limiter.clone();
        let held: Vec<Slot> = (0..3).filter_map(|_| l.try_enter()).collect();
        Queue::build(Some(&limits(1, 0)), Some(&q)).expect("queue");
        Queue::build(Some(&limits(2, 0)), Some(&q)).expect("queue");
        assert!(l.try_enter().is_none(), "3 held of 2");
        drop(held);
        assert_eq!(l.slots.available_permits(), 2);
        assert_eq!(l.inflight(), 0);
    }
}
