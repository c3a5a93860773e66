//! Activity of a client connection: requests in flight, counted until their response body
//! ends, and the time of the last activity (an HTTP/2 connection is closed gracefully after
//! `idle_timeout` without any); whether a drain began (HTTP/1 responses then say
//! `Connection: close`) and whether the client speaks HTTP/2; and, for HTTP/1, the flushes
//! of the client stream, by which a response body hands hyper one chunk at a time.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::proxy::body::ProxyBody;
use crate::upstream::BodyError;

/// Requests in flight on a connection and when the last one ended.
pub(crate) struct Activity {
    origin: Instant,
    active: AtomicUsize,
    /// Milliseconds since `origin` of the last request start or end.
    last_ms: AtomicU64,
    /// A drain began: HTTP/1 responses from now on close the connection.
    draining: AtomicBool,
    /// A request came as HTTP/2 (on an `h2c` listener either protocol may come).
    h2: AtomicBool,
    /// Completed flushes of the HTTP/1 client stream: hyper flushes once everything it
    /// queued was written.
    flushes: AtomicU32,
    /// A response body waits for the next flush (`Tracked`).
    awaits_flush: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            flushes: AtomicU32::new(0),
            awaits_flush: AtomicBool::new(false),
        })
    }

    /// The HTTP/1 client stream wrote everything hyper had queued (`Framed`, in the
    /// connection's task, whose context is `cx`): a response body waiting for it is polled
    /// again.
    pub fn flushed(&self, cx: &Context<'_>) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if self.awaits_flush.swap(false, Ordering::Relaxed) {
            cx.waker().wake_by_ref();
        }
    }

    /// A drain began on this connection.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A request came as HTTP/2.
    pub fn saw_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// Whether a request came as HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A request started; it counts until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
        Active(self.clone())
    }

    /// Requests in flight (counted until their response body ends).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// When the last request started or ended (the connection's start before any).
    pub fn last_activity(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no request has been in flight for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.active.load(Ordering::Relaxed) > 0 {
                timeout
            } else {
                let since = Duration::from_millis(
                    self.now_ms()
                        .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
                );
                if since >= timeout {
                    return;
                }
                timeout - since
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in flight.
pub(crate) struct Active(Arc<Activity>);

impl Active {
    /// Whether its connection is draining.
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as active until it ends. To an HTTP/1
/// client (`one_chunk`), it hands hyper a chunk only once hyper wrote the one before: a
/// client that reads slowly holds one chunk (and the read it shares an allocation with),
/// not the up to `max_header_bytes` hyper would queue (its one limit for both buffers).
pub(crate) struct Tracked {
    inner: ProxyBody,
    active: Option<Active>,
    one_chunk: bool,
    /// The client stream's flush count when the last chunk was handed to hyper.
    handed: Option<u32>,
}

impl Tracked {
    pub fn new(inner: ProxyBody, active: Active, one_chunk: bool) -> Tracked {
        let active = (!inner.is_end_stream()).then_some(active);
        Tracked {
            inner,
            active,
            one_chunk,
            handed: None,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let (Some(handed), Some(Active(activity))) = (this.handed, &this.active) {
            // Same task as the flush (hyper's HTTP/1 connection): no wake-up is missed.
            if activity.flushes.load(Ordering::Relaxed) == handed {
                activity.awaits_flush.store(true, Ordering::Relaxed);
                return Poll::Pending;
            }
            this.handed = None;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.active = None,
            Poll::Ready(Some(Ok(frame))) if this.one_chunk && frame.is_data() => {
                this.handed = this
                    .active
                    .as_ref()
                    .map(|a| a.0.flushes.load(Ordering::Relaxed));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_request_to_end() {
        let activity = Activity::new();
        let guard = activity.begin();
        let idle = activity.idle(Duration::from_secs(10));
        tokio::pin!(idle);
        // In flight: never idle.
        assert!(tokio::time::timeout(Duration::from_secs(60), idle.as_mut())
            .await
            .is_err());
        drop(guard);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), idle.as_mut())
                .await
                .is_err(),
            "idle only 9.5 s"
        );
        assert!(tokio::time::timeout(Duration::from_secs(2), idle.as_mut())
            .await
            .is_ok());
    }
}
