//! Response bodies: a backend's body streamed through (and, once read to its end, its
//! connection returned to the pool), or a small body autolb wrote itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::health::outlier::{self, Outcome};
use crate::log_throttle::warn_throttled;
use crate::runtime::events::EventLog;
use crate::runtime::{Backend, Pool};
use crate::upstream::{BodyError, Sender, UpstreamIncoming};

/// Accounting for one request to one backend, settled exactly once: when the response body
/// ends, fails, or is dropped. The backend's record (its status count, outlier detection) is
/// written then, so that a response broken after its head counts as the backend's failure,
/// never as a success.
pub struct Exchange {
    pub backend: Arc<Backend>,
    pub pool: Arc<Pool>,
    pub events: Arc<EventLog>,
    pub started: Instant,
    pub status: u16,
    /// The connection, returned to the pool only after a complete response.
    pub conn: Option<Sender>,
    /// Attempts the request took (1 without retries).
    pub tries: u32,
    /// Response body bytes forwarded so far.
    pub bytes: u64,
    /// Where the request's time went before the response head (access logs).
    pub timing: crate::accesslog::Timing,
}

/// How a response ended.
pub(crate) enum End<'a> {
    /// Read to its end (or handed to a tunnel after a 101).
    Complete,
    /// Dropped before its end: the client left (not the backend's fault).
    Abandoned,
    /// The backend broke it (invalid body, cut off, silent for too long): its failure.
    Broken(Outcome, &'a dyn std::fmt::Display),
}

impl Exchange {
    /// Settle the accounting (and return the connection to the pool after a complete
    /// response).
    pub(crate) fn finish(mut self, end: End<'_>) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let complete = matches!(end, End::Complete);
        match (complete, self.conn.take()) {
            (true, Some(tx)) => self.backend.conns.checkin(tx),
            (false, Some(_)) => {
                tracing::debug!(backend = %self.backend.address, "response incomplete: connection closed")
            }
            _ => {}
        }
        let (pool, backend) = (&self.pool, &self.backend);
        match end {
            End::Broken(outcome, error) => {
                backend.stats.record_failure();
                outlier::observe(pool, backend, outcome, &self.events);
                if outcome == Outcome::Timeout {
                    warn_throttled!(backend.stats.log, pool = %pool.name, backend = %backend.address, error = %error;
                        "backend went silent in the middle of a response: aborting it");
                } else {
                    warn_throttled!(backend.stats.log, pool = %pool.name, backend = %backend.address, status = self.status, error = %error;
                        "backend broke its response after the head was forwarded: aborting it");
                }
            }
            End::Complete | End::Abandoned => {
                backend.stats.record_status(self.status);
                let outcome = if self.status >= 500 {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                outlier::observe(pool, backend, outcome, &self.events);
            }
        }
        backend.stats.end();
        pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.bytes > 0 {
            pool.stats
                .response_bytes
                .fetch_add(self.bytes, Ordering::Relaxed);
        }
        pool.stats
            .window
            .record(elapsed, self.status >= 500 || !complete, now);
        pool.stats.histogram.record(elapsed);
    }
}

pin_project! {
    /// A backend's response body, streamed frame by frame, failed when the backend stays
    /// silent for longer than the pool's idle timeout.
    pub struct UpstreamBody {
        inner: UpstreamIncoming,
        exchange: Option<Exchange>,
        // The body's first frame, read with the head (`forward::inspect`).
        first: Option<Frame<Bytes>>,
        idle: Duration,
        // Armed only while the backend makes us wait, so a fast body never touches a timer.
        timer: Option<Pin<Box<Sleep>>>,
        progressed: bool,
        // The pool's `limits:` slot of this request, given back when the body is dropped.
        slot: Option<crate::runtime::limit::Slot>,
        // A gRPC call's request stream (and what of it was seen): while it flows, a
        // silent backend is not idle.
        progress: Option<Box<(crate::upstream::progress::Progress, u64)>>,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ex) = this.exchange.take() {
                // Dropped without reading to the end: complete only if nothing was left.
                let end = if this.inner.is_end_stream() { End::Complete } else { End::Abandoned };
                settle(ex, this.inner, end);
            }
        }
    }
}

impl UpstreamBody {
    /// `first`: the body's first frame, already read from `inner`.
    pub fn new(
        inner: UpstreamIncoming,
        first: Option<Frame<Bytes>>,
        exchange: Exchange,
        idle: Duration,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            exchange: Some(exchange),
            first,
            idle,
            timer: None,
            progressed: false,
            slot: None,
            progress: None,
        }
    }

    /// Not idle while `progress` (a gRPC call's request stream) moves.
    pub fn with_progress(mut self, progress: Option<crate::upstream::progress::Progress>) -> Self {
        self.progress = progress.map(|p| Box::new((p, 0)));
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            *this.progressed = true;
            if let (Some(ex), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                ex.bytes += data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(ex) = this.exchange.take() {
                    settle(ex, this.inner, End::Complete);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(ex) = this.exchange.take() {
                    ex.finish(End::Broken(Outcome::Reset, &e));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                *this.progressed = true;
                if let (Some(ex), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                    ex.bytes += data.len() as u64;
                }
                if let (Some(ex), Some(t)) = (this.exchange.as_ref(), frame.trailers_ref()) {
                    // A gRPC call's status comes in its trailers.
                    super::grpc::count(&ex.pool.stats, t);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + *this.idle;
                match this.timer {
                    None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    Some(t) if *this.progressed => t.as_mut().reset(deadline),
                    Some(_) => {}
                }
                *this.progressed = false;
                let fired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    if let Some(p) = this.progress.as_mut() {
                        let (progress, seen) = &mut **p;
                        if progress.moved(seen) {
                            // The client's stream moved: wait another `idle`.
                            if let Some(t) = this.timer.as_mut() {
                                t.as_mut().reset(Instant::now() + *this.idle);
                                let _ = t.as_mut().poll(cx);
                            }
                            return Poll::Pending;
                        }
                    }
                    let error = BodyError::Idle(*this.idle);
                    if let Some(ex) = this.exchange.take() {
                        ex.finish(End::Broken(Outcome::Timeout, &error));
                    }
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(first) = &self.first else {
            return inner;
        };
        let first = first.data_ref().map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

/// Settle a finished exchange; the own client's connection goes back to its pool when the
/// body was read to its end.
fn settle(ex: Exchange, inner: &mut UpstreamIncoming, end: End<'_>) {
    if let Some(conn) = inner
        .take_reusable()
        .filter(|_| matches!(end, End::Complete))
    {
        ex.backend.conns.checkin(conn);
    }
    ex.finish(end);
}

/// Every response body autolb sends downstream.
// `Upstream` is the common case: boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    /// Compressed and/or access-logged (`crate::proxy::observe`).
    Observed(Box<crate::proxy::observe::ObservedBody>),
    /// A gRPC call's answer to a gRPC-Web client (`grpc_web`).
    GrpcWeb(Box<super::grpc_web::WebBody>),
    /// A backend's answer being stored by the HTTP cache (`crate::cache`).
    Cached(Box<crate::cache::Tee<ProxyBody>>),
}

impl ProxyBody {
    /// The backend that answered and after how many attempts, for a body streamed from one.
    pub fn served(&self) -> Option<crate::proxy::observe::Served> {
        match self {
            ProxyBody::Upstream(b) => b.exchange.as_ref().map(|ex| crate::proxy::observe::Served {
                backend: ex.backend.clone(),
                tries: ex.tries,
                timing: ex.timing,
            }),
            ProxyBody::GrpcWeb(b) => b.inner.served(),
            ProxyBody::Cached(b) => b.inner().served(),
            _ => None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    /// Keep the pool's `limits:` slot until a backend's body is forwarded or aborted (a body
    /// autolb wrote, or the empty one of a 101, gives it back at once).
    pub fn hold(&mut self, slot: crate::runtime::limit::Slot) {
        match self {
            ProxyBody::Upstream(b) => b.slot = Some(slot),
            ProxyBody::Cached(b) => b.inner_mut().hold(slot),
            _ => {}
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Observed(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ProxyBody::GrpcWeb(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ProxyBody::Cached(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Observed(b) => b.is_end_stream(),
            ProxyBody::GrpcWeb(b) => b.is_end_stream(),
            ProxyBody::Cached(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Observed(b) => b.size_hint(),
            ProxyBody::GrpcWeb(b) => b.size_hint(),
            ProxyBody::Cached(b) => b.size_hint(),
        }
    }
}
