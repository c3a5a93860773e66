//! A signal (the shutdown watch) awaited beside a connection, polled only when the signal
//! itself woke the task. A connection's task is woken for every read and write; polling
//! tokio's `Notified` each time takes the waiters' lock and compares wakers, twice per
//! proxied request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What the signal's waker sets: a flag, and the task to wake.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// `signal`, polled only on the first poll and after it woke the task.
    pub(super) struct Gated<F> {
        #[pin]
        signal: F,
        gate: Arc<Gate>,
        waker: Waker,
    }
}

pub(super) fn gated<F: Future>(signal: F) -> Gated<F> {
    let gate = Arc::new(Gate {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Gated {
        signal,
        waker: Waker::from(gate.clone()),
        gate,
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.signal.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn the_signal_is_polled_only_when_it_woke_the_task() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let signal_polls = Cell::new(0);
        let mut changed = std::pin::pin!(rx.changed());
        let signal = std::future::poll_fn(|cx| {
            signal_polls.set(signal_polls.get() + 1);
            changed.as_mut().poll(cx)
        });
        let mut stop = std::pin::pin!(gated(signal));
        for _ in 0..3 {
            let ready = std::future::poll_fn(|cx| Poll::Ready(stop.as_mut().poll(cx).is_ready()));
            assert!(!ready.await);
        }
        assert_eq!(
            signal_polls.get(),
            1,
            "only the first poll reaches the signal"
        );
        tx.send(true).expect("receiver alive");
        tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .expect("woken by the signal")
            .expect("changed");
        assert_eq!(signal_polls.get(), 2);
    }
}
