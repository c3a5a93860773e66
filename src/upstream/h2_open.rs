//! One HTTP/2 connection opened at a time per backend: a request that finds no HTTP/2
//! connection with a free stream while another request is opening one waits for it (at
//! most the connect timeout) and shares it, instead of opening its own. Without this, a
//! burst of concurrent calls to a cold backend opened one connection per call (1,000 for
//! h2load's 10 x 100).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify};

#[derive(Debug, Default)]
pub(super) struct H2Opening {
    lock: Mutex<()>,
    opened: Notify,
    /// The last attempt failed: its waiters do not queue for another one.
    failed: AtomicBool,
}

/// Held by the request that opens the connection; waiters are woken when it is dropped
/// (after the connection was shared, or after the attempt failed).
pub(super) struct Opener<'a> {
    _lock: MutexGuard<'a, ()>,
    opening: &'a H2Opening,
}

impl Opener<'_> {
    /// The attempt failed: the requests waiting for it each try on their own.
    pub(super) fn failed(self) {
        self.opening.failed.store(true, Ordering::Relaxed);
    }
}

impl Drop for Opener<'_> {
    fn drop(&mut self) {
        self.opening.opened.notify_waiters();
    }
}

/// What `enter` found.
pub(super) enum Entered<'a> {
    /// This request opens the connection.
    Opener(Opener<'a>),
    /// Another one opened a connection: look for a free stream again.
    Opened,
    /// Another one failed to open, or the wait passed: open one of its own.
    GaveUp,
}

impl H2Opening {
    /// Become the opener, or wait (at most `wait`) for the one opening now.
    pub(super) async fn enter(&self, wait: Duration) -> Entered<'_> {
        let notified = self.opened.notified();
        tokio::pin!(notified);
        // Registered before looking at the lock: an opener finishing in between wakes us.
        notified.as_mut().enable();
        match self.lock.try_lock() {
            Ok(lock) => {
                self.failed.store(false, Ordering::Relaxed);
                Entered::Opener(Opener {
                    _lock: lock,
                    opening: self,
                })
            }
            Err(_) => match tokio::time::timeout(wait, notified).await {
                Ok(()) if !self.failed.load(Ordering::Relaxed) => Entered::Opened,
                _ => Entered::GaveUp,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_opens_the_others_wait_for_it() {
        let h = H2Opening::default();
        let Entered::Opener(first) = h.enter(Duration::from_secs(5)).await else {
            panic!("the first request opens");
        };
        let waiter = async {
            let started = tokio::time::Instant::now();
            assert!(matches!(
                h.enter(Duration::from_secs(5)).await,
                Entered::Opened
            ));
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
        // Nobody opening: the next request opens, and when it fails its waiters give up.
        let Entered::Opener(second) = h.enter(Duration::from_secs(5)).await else {
            panic!("nobody is opening");
        };
        let waiter = h.enter(Duration::from_secs(5));
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            second.failed();
        };
        let (entered, ()) = tokio::join!(waiter, release);
        assert!(matches!(entered, Entered::GaveUp));
        assert!(matches!(
            h.enter(Duration::from_secs(5)).await,
            Entered::Opener(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_opener_holds_the_others_only_for_the_wait() {
        let h = H2Opening::default();
        let _stuck = h.enter(Duration::from_secs(5)).await;
        let started = tokio::time::Instant::now();
        assert!(matches!(
            h.enter(Duration::from_secs(2)).await,
            Entered::GaveUp
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
