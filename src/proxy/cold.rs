//! Scale from zero: a request to an autoscaled pool with no ready instance waits in a
//! bounded queue while the autoscaler starts one, then goes on; past the timeout, 503. When
//! every start attempt of the pool failed, 503 at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::local;
use crate::runtime::{Pool, Runtime};

/// Why a cold request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdStartError {
    QueueFull,
    TimedOut,
    /// No instance of the pool can start (`PoolStats::start_failing`).
    StartFailed,
}

/// Counts a waiting request while it lives.
struct Waiter<'a>(&'a Pool);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.stats.cold_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wait until `pool` (by name, in the live snapshot) has a ready backend.
pub async fn wait_for_ready(
    runtime: &Runtime,
    pool: &Arc<Pool>,
) -> Result<Arc<Pool>, ColdStartError> {
    let Some(cold) = pool.cold_start else {
        return Ok(pool.clone());
    };
    let stats = &pool.stats;
    if stats.start_failing.load(Ordering::Relaxed) {
        return Err(ColdStartError::StartFailed);
    }
    if stats.cold_waiters.fetch_add(1, Ordering::Relaxed) >= u64::from(cold.queue) {
        stats.cold_waiters.fetch_sub(1, Ordering::Relaxed);
        return Err(ColdStartError::QueueFull);
    }
    let _waiter = Waiter(pool);
    stats.demand_notify.notify_one();
    let deadline = Instant::now() + cold.timeout;
    loop {
        let notified = stats.ready_notify.notified();
        let snapshot = runtime.snapshot();
        if let Some(now) = snapshot.pool(&pool.name) {
            if now.ready_backends() > 0 {
                return Ok(now.clone());
            }
        }
        if stats.start_failing.load(Ordering::Relaxed) {
            return Err(ColdStartError::StartFailed);
        }
        if Instant::now() >= deadline {
            return Err(ColdStartError::TimedOut);
        }
        // Woken by a backend becoming ready; polled as well, bounded by the deadline.
        let nap = Instant::now() + Duration::from_millis(100);
        let _ = tokio::time::timeout_at(nap.min(deadline), notified).await;
    }
}

/// The 503 for a request that found no ready instance, with `Retry-After` (the pool's
/// health-check interval). Start failures are logged by the autoscaler once, not here per
/// request.
pub fn refused(pool: &Pool, why: ColdStartError) -> Response<ProxyBody> {
    let message = match why {
        ColdStartError::StartFailed => "no instance can start",
        ColdStartError::QueueFull | ColdStartError::TimedOut => {
            tracing::warn!(pool = %pool.name, reason = ?why, "no instance became ready: 503");
            "no instance ready"
        }
    };
    let mut resp = local::error(StatusCode::SERVICE_UNAVAILABLE, message, Some(&pool.name));
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(pool.retry_after_secs()));
    resp
}
