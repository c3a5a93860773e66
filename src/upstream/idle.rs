//! Idle connections of one backend on one worker, most recently used first (LIFO): after a
//! burst the extra connections stay unused and expire while the busy few stay warm (a FIFO
//! would cycle through all of them); the oldest are dropped once past the idle timeout.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Expired (and unusable) connections closed per `pop` at most.
const EXPIRE_PER_POP: usize = 4;

/// A bounded stack of idle connections with the time each was parked. Only its own worker
/// uses it, so its lock is never contended.
pub struct IdleStack<T> {
    conns: Mutex<VecDeque<(T, Instant)>>,
    cap: usize,
}

impl<T> IdleStack<T> {
    pub fn new(cap: usize) -> IdleStack<T> {
        IdleStack {
            conns: Mutex::new(VecDeque::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(T, Instant)>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Park `conn`; past the cap it is dropped (closed).
    pub fn push(&self, conn: T) {
        let mut conns = self.lock();
        if conns.len() < self.cap {
            conns.push_back((conn, Instant::now()));
        }
    }

    /// The most recently parked connection younger than `max_idle` that `usable` accepts;
    /// those idle for `max_idle` or longer (a few per call, so that closing a burst's
    /// leftovers never stalls one request), and the unusable ones met on the way, are
    /// dropped.
    pub fn pop(&self, max_idle: Duration, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut conns = self.lock();
        let now = Instant::now();
        for _ in 0..EXPIRE_PER_POP {
            match conns.front() {
                Some((_, since)) if now.saturating_duration_since(*since) >= max_idle => {
                    conns.pop_front();
                }
                _ => break,
            }
        }
        for _ in 0..EXPIRE_PER_POP {
            let (conn, since) = conns.pop_back()?;
            if now.saturating_duration_since(since) >= max_idle {
                // The newest is expired: so are the rest, left for later calls.
                return None;
            }
            if usable(&conn) {
                return Some(conn);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn newest_first_and_old_ones_expire() {
        let stack = IdleStack::new(3);
        stack.push(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        stack.push(2);
        stack.push(3);
        stack.push(4); // over the cap: dropped
        assert_eq!(stack.len(), 3);
        assert_eq!(stack.pop(Duration::from_secs(60), |_| true), Some(3));
        // 1 is 5 s old: expired with a 4 s idle timeout (4 at most per call); 2 is the
        // newest left.
        assert_eq!(stack.pop(Duration::from_secs(4), |_| true), Some(2));
        assert_eq!(stack.len(), 0);
        stack.push(7);
        stack.push(8);
        assert_eq!(stack.pop(Duration::from_secs(60), |c| *c != 8), Some(7));
        assert_eq!(stack.pop(Duration::from_secs(60), |_| true), None);
        // After a quiet spell longer than the idle timeout none is handed out, not even
        // the newest, though only a few are closed per call.
        let stack = IdleStack::new(10);
        for c in 10..16 {
            stack.push(c);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(stack.pop(Duration::from_secs(4), |_| true), None);
        assert_eq!(
            stack.len(),
            1,
            "4 expired from the front, the newest dropped"
        );
        assert_eq!(stack.pop(Duration::from_secs(4), |_| true), None);
        assert_eq!(stack.len(), 0);
    }
}
