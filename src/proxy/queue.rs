//! Admission to a pool with `limits:`: a slot at once while the pool is under
//! `max_inflight`, else a FIFO wait in its bounded queue, else 503 (queue full at once, queue
//! timeout after `queue_timeout`). The slot rides on the response body until it has been
//! forwarded or aborted; one slot covers every retry of the request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::local;
use crate::runtime::limit::{Refused, Slot};
use crate::runtime::{Pool, Runtime};

/// A request let into its pool.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The slot held (None: the pool has no limit).
    pub slot: Option<Slot>,
    /// After a wait in the queue: the pool of the live snapshot (a reload may have come).
    pub fresh: Option<Arc<Pool>>,
    /// How long the request waited in the queue.
    pub waited: std::time::Duration,
}

impl Admitted {
    /// Hand the slot to the response: held until its body is forwarded (a WebSocket's 101 or
    /// an error autolb wrote gives it back at once).
    pub fn hold(self, resp: &mut Response<ProxyBody>) {
        if let Some(slot) = self.slot {
            resp.body_mut().hold(slot);
        }
    }
}

/// Let a request into `pool`, waiting in its queue if need be; a 503 when refused.
pub async fn admit(runtime: &Runtime, pool: &Arc<Pool>) -> Result<Admitted, Response<ProxyBody>> {
    let Some(queue) = &pool.queue else {
        return Ok(Admitted::default());
    };
    // The fast path: a free slot, no waiting, no snapshot load.
    if let Some(slot) = queue.limiter.try_enter() {
        return Ok(Admitted {
            slot: Some(slot),
            ..Admitted::default()
        });
    }
    let waiting = tokio::time::Instant::now();
    match queue.limiter.enter(&queue.limits).await {
        Ok(slot) => Ok(Admitted {
            slot: Some(slot),
            fresh: runtime.snapshot().pool(&pool.name).cloned(),
            waited: waiting.elapsed(),
        }),
        Err(refused) => Err(refuse(pool, refused)),
    }
}

/// The 503 for a request whose `timeouts.request_total` ran out while it waited in the
/// queue, with Retry-After.
pub fn over_budget(pool: &Pool) -> Response<ProxyBody> {
    pool.stats.local_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(pool = %pool.name, "timeouts.request_total over while queued: 503");
    let mut resp = local::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no slot of the pool came free within timeouts.request_total",
        Some(&pool.name),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The 503 for a refused request, with Retry-After, and its log line.
fn refuse(pool: &Pool, refused: Refused) -> Response<ProxyBody> {
    pool.stats.local_errors.fetch_add(1, Ordering::Relaxed);
    let limits = pool.queue.as_ref().map(|q| q.limits);
    match refused {
        Refused::Full => tracing::warn!(
            pool = %pool.name,
            max_inflight = limits.map(|l| l.max_inflight),
            max_queue = limits.map(|l| l.max_queue),
            "pool at max_inflight and its queue is full: 503"
        ),
        Refused::Timeout => tracing::warn!(
            pool = %pool.name,
            max_inflight = limits.map(|l| l.max_inflight),
            queue_timeout = ?limits.map(|l| l.queue_timeout),
            "no slot of the pool came free within queue_timeout: 503"
        ),
    }
    let mut resp = local::error(
        StatusCode::SERVICE_UNAVAILABLE,
        &refused.to_string(),
        Some(&pool.name),
    );
    resp.extensions_mut().insert(super::grpc::Exhausted);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
