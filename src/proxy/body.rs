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
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::upstream::{RawBody, RawConn, RawError, Sender};
use crate::runtime::{Backend, PoolStats};

/// Accounting for one request to one backend, settled exactly once: when the response body
/// ends, fails, or is dropped.
pub struct Exchange {
    pub backend: Arc<Backend>,
    pub pool: Arc<PoolStats>,
    pub started: Instant,
    pub status: u16,
    /// The connection, returned to the pool only after a complete response.
    pub conn: Option<Sender>,
    /// Attempts the request took (1 without retries).
    pub tries: u32,
    /// Response body bytes forwarded so far.
    pub bytes: u64,
    /// Where the request's time went before the response head (access logs).
    pub timing: crate::observe::Timing,
}

impl Exchange {
    /// Settle the accounting (and return the connection to the pool after a complete
    /// response).
    pub(crate) fn finish(mut self, complete: bool) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        match (complete, self.conn.take()) {
            (true, Some(tx)) => self.backend.conns.checkin(tx),
            (false, Some(_)) => {
                tracing::debug!(backend = %self.backend.address, "response incomplete: connection closed")
            }
            _ => {}
        }
        self.backend.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        if self.bytes > 0 {
            self.pool
                .response_bytes
                .fetch_add(self.bytes, Ordering::Relaxed);
        }
        self.pool
            .window
            .record(elapsed, self.status >= 500 || !complete, now);
        self.pool.histogram.record(elapsed);
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Backend(#[from] hyper::Error),
    #[error(transparent)]
    Raw(#[from] RawError),
    #[error("backend sent nothing for {0:?} in the middle of a response")]
    Idle(Duration),
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
}

pin_project! {
    /// A backend's response body, streamed frame by frame, failed when the backend stays
    /// silent for longer than the pool's idle timeout.
    pub struct UpstreamBody {
        inner: UpstreamIncoming,
        exchange: Option<Exchange>,
        idle: Duration,
        // Armed only while the backend makes us wait, so a fast body never touches a timer.
        timer: Option<Pin<Box<Sleep>>>,
        progressed: bool,
        // The pool's `limits:` slot of this request, given back when the body is dropped.
        slot: Option<crate::runtime::limit::Slot>,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ex) = this.exchange.take() {
                // Dropped without reading to the end: complete only if nothing was left.
                let complete = this.inner.is_end_stream();
                settle(ex, this.inner, complete);
            }
        }
    }
}

impl UpstreamBody {
    pub fn new(inner: UpstreamIncoming, exchange: Exchange, idle: Duration) -> UpstreamBody {
        UpstreamBody {
            inner,
            exchange: Some(exchange),
            idle,
            timer: None,
            progressed: false,
            slot: None,
        }
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
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(ex) = this.exchange.take() {
                    settle(ex, this.inner, true);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(ex) = this.exchange.take() {
                    ex.finish(false);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                *this.progressed = true;
                if let (Some(ex), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                    ex.bytes += data.len() as u64;
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
                    if let Some(ex) = this.exchange.take() {
                        tracing::warn!(
                            backend = %ex.backend.address,
                            idle = ?*this.idle,
                            "backend went silent in the middle of a response: aborting it"
                        );
                        ex.finish(false);
                    }
                    return Poll::Ready(Some(Err(BodyError::Idle(*this.idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Settle a finished exchange; the own client's connection goes back to its pool when the
/// body was read to its end.
fn settle(ex: Exchange, inner: &mut UpstreamIncoming, complete: bool) {
    if let Some(conn) = inner.take_reusable().filter(|_| complete) {
        ex.backend.conns.checkin_raw(conn);
    }
    ex.finish(complete);
}

/// A backend's response body as the client that read its head gives it: hyper's, or the
/// own HTTP/1.1 client's.
#[derive(Debug)]
pub enum UpstreamIncoming {
    Hyper(Incoming),
    Raw(RawBody),
}

impl UpstreamIncoming {
    /// The own client's connection, when the body was read to its end and it is reusable.
    pub fn take_reusable(&mut self) -> Option<RawConn> {
        match self {
            UpstreamIncoming::Raw(body) => body.take_reusable(),
            UpstreamIncoming::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamIncoming::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            UpstreamIncoming::Raw(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Hyper(b) => b.is_end_stream(),
            UpstreamIncoming::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::Hyper(b) => b.size_hint(),
            UpstreamIncoming::Raw(b) => b.size_hint(),
        }
    }
}

/// A request body sent to a backend: the client's, streamed, or none (a resent request whose
/// original had no body).
#[derive(Debug)]
pub enum RequestBody {
    Client(super::body_rate::ClientBody),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = super::body_rate::ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Every response body autolb sends downstream.
// `Upstream` is the common case: boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    /// Compressed and/or access-logged (`crate::observe`).
    Observed(Box<crate::observe::ObservedBody>),
}

impl ProxyBody {
    /// The backend that answered and after how many attempts, for a body streamed from one.
    pub fn served(&self) -> Option<crate::observe::Served> {
        match self {
            ProxyBody::Upstream(b) => b.exchange.as_ref().map(|ex| crate::observe::Served {
                backend: ex.backend.clone(),
                tries: ex.tries,
                timing: ex.timing,
            }),
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
        if let ProxyBody::Upstream(b) = self {
            b.slot = Some(slot);
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Observed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Observed(b) => b.size_hint(),
        }
    }
}
