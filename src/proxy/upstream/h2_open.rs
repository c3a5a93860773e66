//! One HTTP/2 connection opened at a time per backend: a request that finds no idle HTTP/2
//! connection while another request is opening one waits for it (at most the connect
//! timeout) and shares it, instead of opening its own. Without this, a burst of concurrent
//! calls to a cold backend opened one connection per call (1,000 for h2load's 10 x 100).

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify};

#[derive(Debug, Default)]
pub(super) struct H2Opening {
    lock: Mutex<()>,
    opened: Notify,
}

/// Held by the request that opens the connection; waiters are woken when it is dropped
/// (after the shared handle went into the idle queue, or after the attempt failed).
pub(super) struct Opener<'a> {
    _lock: MutexGuard<'a, ()>,
    opened: &'a Notify,
}

impl Drop for Opener<'_> {
    fn drop(&mut self) {
        self.opened.notify_waiters();
    }
}

impl H2Opening {
    /// `Some`: this request opens the connection. `None`: another one was opening it and is
    /// done (or `wait` passed): look in the idle queue again, and open one if it is empty.
    pub(super) async fn enter(&self, wait: Duration) -> Option<Opener<'_>> {
        let notified = self.opened.notified();
        tokio::pin!(notified);
        // Registered before looking at the lock: an opener finishing in between wakes us.
        notified.as_mut().enable();
        match self.lock.try_lock() {
            Ok(lock) => Some(Opener {
                _lock: lock,
                opened: &self.opened,
            }),
            Err(_) => {
                let _ = tokio::time::timeout(wait, notified).await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_opens_the_others_wait_for_it() {
        let h = H2Opening::default();
        let first = h.enter(Duration::from_secs(5)).await.expect("the opener");
        let waiter = async {
            let started = tokio::time::Instant::now();
            assert!(h.enter(Duration::from_secs(5)).await.is_none());
            started.elapsed()
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
        };
        let (waited, ()) = tokio::join!(waiter, release);
        assert_eq!(
            waited,
            Duration::from_millis(100),
            "woken when the opener is done"
        );
        // Nobody opening: the next request opens.
        assert!(h.enter(Duration::from_secs(5)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_opener_holds_the_others_only_for_the_wait() {
        let h = H2Opening::default();
        let _stuck = h.enter(Duration::from_secs(5)).await.expect("the opener");
        let started = tokio::time::Instant::now();
        assert!(h.enter(Duration::from_secs(2)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
