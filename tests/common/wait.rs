//! Waiting for a condition: poll it until it holds or a deadline passes, then fail with what
//! was awaited (and whatever the caller adds to explain it). Every wait in the tests goes
//! through here, so none sleeps a fixed time before an assertion and none hand-writes a
//! deadline loop.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(50);

/// Poll `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn wait_until<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_or(secs, f, || format!("timed out waiting for {what}")).await
}

/// [`wait_until`], failing with `why()` (a log, the last state seen) when time runs out.
pub async fn wait_until_or<T, F, Fut>(secs: u64, mut f: F, why: impl FnOnce() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("after {secs}s: {}", why());
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// `fetch` (a status page, a sample of every node) polled every 50 ms until `done` holds
/// for what it returned, for at most `secs` seconds; that value. Fails with `why(last)`,
/// `last` being the value seen last.
pub async fn wait_for_value<T, F, Fut>(
    secs: u64,
    mut fetch: F,
    done: impl Fn(&T) -> bool,
    why: impl FnOnce(&T) -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = fetch().await;
        if done(&v) {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("after {secs}s: {}", why(&v));
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// `f` polled every `every` until it returns `Some` or `within` passed (`None`): for a test
/// that asserts a condition never comes, or that has a fallback when it does not.
pub async fn poll_for<T, F, Fut>(within: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`wait_until`] for code outside an async runtime (a thread blocks between polls).
pub fn wait_blocking<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_blocking_or(secs, f, || format!("timed out waiting for {what}"))
}

/// [`wait_until_or`] for code outside an async runtime.
pub fn wait_blocking_or<T>(
    secs: u64,
    f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    match poll_blocking(Duration::from_secs(secs), Duration::from_millis(20), f) {
        Some(v) => v,
        None => panic!("after {secs}s: {}", why()),
    }
}

/// [`poll_for`] for code outside an async runtime.
pub fn poll_blocking<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A deadline for a wait loop whose condition needs `&mut` state (a client that sends the
/// next request) and so cannot be a closure: `while !done(&mut c).await { d.tick().await }`.
pub struct Deadline {
    at: Instant,
    secs: u64,
    what: String,
}

impl Deadline {
    /// `secs` from now, waiting for `what`.
    pub fn after(secs: u64, what: impl Into<String>) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_secs(secs),
            secs,
            what: what.into(),
        }
    }

    /// Fails when the deadline passed; else waits before the next poll.
    pub async fn tick(&self) {
        self.tick_or(String::new).await
    }

    /// [`Deadline::tick`], failing with `why()` (a log, the last state seen) too.
    pub async fn tick_or(&self, why: impl FnOnce() -> String) {
        self.check(why);
        tokio::time::sleep(EVERY).await;
    }

    /// [`Deadline::tick`] outside an async runtime.
    pub fn tick_blocking(&self) {
        self.check(String::new);
        std::thread::sleep(Duration::from_millis(20));
    }

    fn check(&self, why: impl FnOnce() -> String) {
        if Instant::now() >= self.at {
            panic!(
                "after {}s: timed out waiting for {}\n{}",
                self.secs,
                self.what,
                why()
            );
        }
    }
}
