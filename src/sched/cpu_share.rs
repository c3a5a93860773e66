//! Sharing a saturated worker's core: while a worker finds new work at every pass of its
//! scheduler, it gives its CPU away between passes (`sched_yield`, at most once a ms),
//! so that the processes it waits for (backends, clients on the same machine) run soon
//! instead of queueing behind a thread that never sleeps.
//!
//! Why: a worker under load never blocks in `epoll_wait` (events are always ready), so
//! the kernel sees a CPU hog, and backends woken by its writes wait on its core for the
//! rest of its slice. HAProxy runs in short slices between them; autolb's tail latency
//! with backends on the same 2 cores was 1.5x HAProxy's until it yielded between passes
//! (bench/NOTES.md, "Fourth pass"). With nothing else runnable on the core,
//! `sched_yield` returns at once: at most one syscall per `MIN_INTERVAL`.
//!
//! The yielder is one task per worker. It sleeps while the worker is idle (it never keeps
//! the worker from parking) and is woken by `note_work` after `WAKE_EVERY` units of work;
//! it then runs once per pass (`tokio::task::yield_now` waits for the next poll of the
//! I/O driver), yielding at most every `MIN_INTERVAL`, until a pass brings no new work.
//! Yields fall between passes, after the responses of a pass were written.
//! `AUTOLB_CPU_YIELD=off` disables it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// At most one yield per this much busy running (wall time, not tokio's clock). Below the
/// kernel's time slice (1.4 ms on a 2-core machine: 0.7 ms x (1 + log2 CPUs)), which is how
/// long a woken backend could otherwise wait behind the worker. Measured: 2 ms lost the
/// tail-latency gain, 250 µs kept it but cost 5-10% of requests/s; 1 ms kept both.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Work noted while the yielder sleeps before it is woken: at light load it stays asleep
/// for most requests, costing nothing.
const WAKE_EVERY: u64 = 16;

thread_local! {
    /// Units of work (requests, tunnel transfers) this worker has started.
    static WORK: Cell<u64> = const { Cell::new(0) };
    /// The sleeping yielder, if it sleeps.
    static ASLEEP: Cell<Option<Waker>> = const { Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Times this worker gave its CPU away (what the tests count).
    static YIELDS: Cell<u64> = const { Cell::new(0) };
}

/// Whether workers run the yielder (`AUTOLB_CPU_YIELD=off` turns it off, for comparisons).
pub fn enabled_from_env() -> bool {
    !matches!(
        std::env::var("AUTOLB_CPU_YIELD").as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// A unit of work started on this worker: a request, or bytes moved through a tunnel.
#[inline]
pub(crate) fn note_work() {
    let n = WORK.get().wrapping_add(1);
    WORK.set(n);
    if n.is_multiple_of(WAKE_EVERY) {
        if let Some(waker) = ASLEEP.take() {
            waker.wake();
        }
    }
}

/// Times this thread's worker has given its CPU away.
#[cfg(test)]
fn yields() -> u64 {
    YIELDS.get()
}

/// Whether this thread's yielder is asleep.
#[cfg(test)]
fn asleep() -> bool {
    let waker = ASLEEP.take();
    let asleep = waker.is_some();
    ASLEEP.set(waker);
    asleep
}

/// The yielder: spawn once on each single-threaded worker runtime.
pub async fn run() {
    run_every(MIN_INTERVAL).await
}

/// The yielder, giving the CPU away at most once per `min_interval` of busy passes.
async fn run_every(min_interval: Duration) {
    loop {
        Sleep { registered: false }.await;
        let mut seen = WORK.get();
        let mut last = Instant::now();
        loop {
            // Back after the worker's other ready tasks and the next poll of the driver.
            tokio::task::yield_now().await;
            let now = WORK.get();
            if now == seen {
                break;
            }
            seen = now;
            if last.elapsed() >= min_interval {
                #[cfg(test)]
                YIELDS.set(YIELDS.get() + 1);
                std::thread::yield_now();
                last = Instant::now();
            }
        }
    }
}

/// Until `note_work` wakes the yielder.
struct Sleep {
    registered: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let waker = ASLEEP.take();
        if self.registered && waker.is_none() {
            // `note_work` took the waker: woken by work.
            return Poll::Ready(());
        }
        self.registered = true;
        ASLEEP.set(Some(match waker {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        }));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A worker with work at every pass yields once per pass; when the work stops, the
    /// yielder goes back to sleep after one empty pass and yields no more.
    #[test]
    fn yields_once_per_busy_pass_and_sleeps_when_idle() {
        runtime().block_on(async {
            tokio::spawn(run_every(Duration::ZERO));
            tokio::task::yield_now().await;
            assert!(asleep(), "the yielder sleeps before any work");
            let before = yields();
            // 200 passes with 4 units of work each.
            for _ in 0..200 {
                for _ in 0..4 {
                    note_work();
                }
                tokio::task::yield_now().await;
            }
            let busy = yields() - before;
            assert!(
                (150..=200).contains(&busy),
                "one yield per busy pass: {busy} in 200 passes"
            );
            // No more work: at most a pass or two later it sleeps, and stays so.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            assert!(asleep(), "the yielder sleeps once the work stops");
            let idle = yields();
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert_eq!(yields(), idle, "no yields while idle");
        });
    }

    /// At light load the sleeping yielder is woken only every `WAKE_EVERY` units of work.
    #[test]
    fn light_work_does_not_wake_the_yielder_each_time() {
        runtime().block_on(async {
            tokio::spawn(run_every(Duration::ZERO));
            tokio::task::yield_now().await;
            let start = WORK.get();
            let mut woken = 0;
            for _ in 0..(WAKE_EVERY * 4) {
                note_work();
                if !asleep() {
                    woken += 1;
                    // Let it find an empty pass and fall asleep again.
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                }
            }
            assert!(WORK.get() - start >= WAKE_EVERY * 4);
            assert_eq!(woken, 4, "woken once per {WAKE_EVERY} units of work");
        });
    }

    /// Busy passes shorter than the interval yield at most once per interval.
    #[test]
    fn yields_at_most_once_per_interval() {
        runtime().block_on(async {
            tokio::spawn(run_every(Duration::from_millis(5)));
            tokio::task::yield_now().await;
            let before = yields();
            let start = Instant::now();
            for _ in 0..2000 {
                for _ in 0..WAKE_EVERY {
                    note_work();
                }
                tokio::task::yield_now().await;
            }
            let elapsed = start.elapsed();
            let most = elapsed.as_millis() as u64 / 5 + 1;
            let busy = yields() - before;
            assert!(
                busy <= most,
                "{busy} yields in {elapsed:?} of busy passes: at most {most}"
            );
        });
    }
}
