//! The client's request body on its way to the backend. `ClientBody` fails it with
//! `TooSlow` when the client keeps us waiting too long for what it sends (the minimum
//! request-body rate, `limits: {body_timeout, min_body_rate}`, the slow-POST defence), and
//! with `TooLarge` past `limits.max_body`; it notes how it failed in its `FaultWatch`
//! (see `client_fault`).
//!
//! Only time spent waiting for the client counts (from a poll that found no data to the next
//! one that did): while the backend reads slowly the body is not polled, so backpressure never
//! counts against the client. The first `body_timeout` of waiting is free; each byte
//! received then buys `1 / min_body_rate` s more (Apache mod_reqtimeout's `body=…,MinRate=…`,
//! counted in waiting time). A timer exists only while a request with a body waits for its
//! client; bodiless requests and data that is already there never touch one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::client_fault::{ClientFault, FaultWatch, TooLarge};
use crate::config::Limits;

/// A request body sent to the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Reading it from the client failed (reset, bad chunk, ...).
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// Reading it from an HTTP/3 client failed (stream reset, connection lost, ...).
    #[error(transparent)]
    Http3(#[from] h3::error::StreamError),
    /// The client sent it too slowly.
    #[error(transparent)]
    TooSlow(#[from] TooSlow),
    /// The client sent more than `limits.max_body`.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A gRPC-Web text body that is not base64.
    #[error(transparent)]
    BadText(#[from] BadText),
}

/// A gRPC-Web text body that is not base64 (`proxy::grpc_web`).
#[derive(Debug, thiserror::Error)]
#[error("gRPC-Web text body is not base64: {0}")]
pub struct BadText(pub base64::DecodeError);

/// The client fell below `min_body_rate` after the `body_timeout` grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "client sent {received} bytes of the request body in {waited:?} of waiting \
     (below {rate} bytes/s after a {grace:?} grace)"
)]
pub struct TooSlow {
    pub received: u64,
    pub waited: Duration,
    pub rate: u64,
    pub grace: Duration,
}

/// The client's request body, failed with `TooSlow` when the client is too slow and with
/// `TooLarge` past `max_body`.
#[derive(Debug)]
pub struct ClientBody<B = super::downstream::Downstream> {
    inner: B,
    /// `None`: nothing to watch (no body, or `min_body_rate: 0`).
    pace: Option<Pace>,
    /// Bytes the body may still carry (`limits.max_body`).
    left: u64,
    max_body: u64,
    too_large: bool,
    /// How the body failed, for the request (only a request with a body has one).
    watch: Option<FaultWatch>,
    /// `None`: nothing to count (no body).
    count: Option<Box<BytesIn>>,
}

/// Counts the body bytes a client sent: into its pool's total (`PoolStats::request_bytes`)
/// when the body is dropped, and (as they arrive) into the access log's counter.
#[derive(Debug)]
struct BytesIn {
    total: Arc<AtomicU64>,
    seen: u64,
    log: Option<RequestBytes>,
}

/// The access log's count of a request's body bytes, set by the proxy as they arrive.
#[derive(Debug, Clone, Default)]
pub struct RequestBytes(pub Arc<AtomicU64>);

impl<B: Body> ClientBody<B> {
    /// Watches `inner` with the listener's `body_timeout`, `min_body_rate` and `max_body`.
    pub fn new(inner: B, limits: &Limits) -> ClientBody<B> {
        let pace = (limits.min_body_rate > 0 && !inner.is_end_stream())
            .then(|| Pace::new(limits.body_timeout, limits.min_body_rate));
        let watch = (!inner.is_end_stream()).then(FaultWatch::default);
        ClientBody {
            inner,
            pace,
            left: limits.max_body,
            max_body: limits.max_body,
            too_large: false,
            watch,
            count: None,
        }
    }

    /// Count the body's bytes into `total` (and `log`); a no-op for a request without a
    /// body.
    pub fn counted(mut self, total: &Arc<AtomicU64>, log: Option<RequestBytes>) -> Self {
        if !self.inner.is_end_stream() {
            self.count = Some(Box::new(BytesIn {
                total: total.clone(),
                seen: 0,
                log,
            }));
        }
        self
    }

    /// Without the minimum rate (`min_body_rate`): a gRPC call's stream, which may pause.
    pub fn unpaced(mut self) -> Self {
        self.pace = None;
        self
    }

    /// Where this body notes how it failed (`None` for a request without a body).
    pub fn watch(&self) -> Option<FaultWatch> {
        self.watch.clone()
    }

    fn over(&mut self) -> ClientBodyError {
        self.too_large = true;
        self.pace = None;
        TooLarge {
            limit: self.max_body,
        }
        .into()
    }
}

impl<B> Drop for ClientBody<B> {
    fn drop(&mut self) {
        if let Some(c) = self.count.as_ref().filter(|c| c.seen > 0) {
            c.total.fetch_add(c.seen, Ordering::Relaxed);
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<ClientBodyError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        if let (Poll::Ready(Some(Err(e))), Some(watch)) = (&polled, &this.watch) {
            watch.set(ClientFault::of(e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        !self.too_large
            && self.pace.as_ref().is_none_or(|p| p.failed.is_none())
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<ClientBodyError>,
{
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self;
        if this.too_large {
            return Poll::Ready(Some(Err(this.over())));
        }
        if let Some(failed) = this.pace.as_ref().and_then(|p| p.failed) {
            return Poll::Ready(Some(Err(failed.into())));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            if len > this.left {
                return Poll::Ready(Some(Err(this.over())));
            }
            this.left -= len;
            if let Some(c) = this.count.as_mut() {
                c.seen += len;
                if let Some(log) = &c.log {
                    log.0.fetch_add(len, Ordering::Relaxed);
                }
            }
        }
        let Some(pace) = this.pace.as_mut() else {
            return polled.map(|f| f.map(|r| r.map_err(Into::into)));
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                pace.arrived(frame.data_ref().map_or(0, |d| d.len() as u64));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                // The end, or the client's own error: nothing more to watch.
                this.pace = None;
                Poll::Ready(end.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match pace.waiting(cx) {
                Ok(()) => Poll::Pending,
                Err(slow) => Poll::Ready(Some(Err(slow.into()))),
            },
        }
    }
}

/// How long the client made us wait, and for how much.
#[derive(Debug)]
struct Pace {
    grace: Duration,
    /// Bytes per second, > 0.
    rate: u64,
    received: u64,
    /// Waits that ended (data came).
    waited: Duration,
    /// The start of the current wait.
    since: Option<Instant>,
    /// Armed at the current wait's deadline; created on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    failed: Option<TooSlow>,
}

impl Pace {
    fn new(grace: Duration, rate: u64) -> Pace {
        Pace {
            grace,
            rate,
            received: 0,
            waited: Duration::ZERO,
            since: None,
            timer: None,
            failed: None,
        }
    }

    /// The longest total wait the client has earned: the grace plus `received / rate`.
    fn allowance(&self) -> Duration {
        let whole = Duration::from_secs(self.received / self.rate);
        let nanos = u128::from(self.received % self.rate) * 1_000_000_000 / u128::from(self.rate);
        self.grace
            .saturating_add(whole)
            .saturating_add(Duration::from_nanos(nanos as u64))
    }

    /// Data (`bytes` of it) came: a wait, if one was running, ends.
    fn arrived(&mut self, bytes: u64) {
        if let Some(since) = self.since.take() {
            self.waited = self
                .waited
                .saturating_add(Instant::now().saturating_duration_since(since));
        }
        self.received = self.received.saturating_add(bytes);
    }

    /// The client has nothing for us: start (or go on with) a wait, `Err` once it is over.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), TooSlow> {
        let since = match self.since {
            Some(since) => since,
            None => {
                let now = Instant::now();
                self.since = Some(now);
                let left = self.allowance().saturating_sub(self.waited);
                // Past what an Instant can hold: no deadline (a rate of 1 byte/s and ~2^64
                // bytes received).
                let Some(deadline) = now.checked_add(left) else {
                    self.timer = None;
                    return Ok(());
                };
                match self.timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                now
            }
        };
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if !fired {
            return Ok(());
        }
        let waited = self
            .waited
            .saturating_add(Instant::now().saturating_duration_since(since));
        let slow = TooSlow {
            received: self.received,
            waited,
            rate: self.rate,
            grace: self.grace,
        };
        self.failed = Some(slow);
        self.timer = None;
        Err(slow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A client body fed by the test: data when sent, Pending otherwise, the end when the
    /// sender is dropped.
    struct Feed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Feed {
        type Data = Bytes;
        type Error = ClientBodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn limits(grace_ms: u64, rate: u64) -> Limits {
        Limits {
            body_timeout: Duration::from_millis(grace_ms),
            min_body_rate: rate,
            ..Limits::default()
        }
    }

    fn body(grace_ms: u64, rate: u64) -> (mpsc::UnboundedSender<Bytes>, ClientBody<Feed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ClientBody::new(Feed(rx), &limits(grace_ms, rate)))
    }

    async fn next(b: &mut ClientBody<Feed>) -> Option<Result<usize, ClientBodyError>> {
        b.frame()
            .await
            .map(|f| f.map(|f| f.into_data().map_or(0, |d| d.len())))
    }

    fn slow(r: Option<Result<usize, ClientBodyError>>) -> TooSlow {
        match r {
            Some(Err(ClientBodyError::TooSlow(s))) => s,
            other => panic!("expected TooSlow, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_fails_after_the_grace() {
        let (_tx, mut b) = body(1000, 100);
        let t0 = Instant::now();
        let s = slow(next(&mut b).await);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!((s.received, s.waited), (0, Duration::from_secs(1)));
        // It stays failed; never a clean end.
        assert!(!b.is_end_stream());
        assert!(matches!(
            next(&mut b).await,
            Some(Err(ClientBodyError::TooSlow(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_buys_waiting_time_at_the_rate() {
        let (tx, mut b) = body(1000, 100);
        tx.send(Bytes::from(vec![b'x'; 50])).expect("send");
        assert_eq!(next(&mut b).await.expect("frame").expect("data"), 50);
        let t0 = Instant::now();
        let s = slow(next(&mut b).await);
        // 1 s of grace + 50 bytes at 100 bytes/s.
        assert_eq!(t0.elapsed(), Duration::from_millis(1500));
        assert_eq!((s.received, s.waited), (50, Duration::from_millis(1500)));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_body_is_not_polled_does_not_count() {
        let (tx, mut b) = body(1000, 100);
        tx.send(Bytes::from_static(b"abcd")).expect("send");
        assert_eq!(next(&mut b).await.expect("frame").expect("data"), 4);
        // The backend reads nothing for a minute (backpressure): the body is not polled.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tx.send(Bytes::from_static(b"efgh")).expect("send");
        assert_eq!(next(&mut b).await.expect("frame").expect("data"), 4);
        let t0 = Instant::now();
        let s = slow(next(&mut b).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(1080));
        assert_eq!((s.received, s.waited), (8, Duration::from_millis(1080)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_at_the_rate_is_never_cut() {
        let (tx, mut b) = body(1000, 100);
        tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from(vec![b'y'; 100])).expect("send");
            }
        });
        let mut total = 0;
        while let Some(r) = next(&mut b).await {
            total += r.expect("not cut");
        }
        assert_eq!(total, 3000);
    }

    #[test]
    fn bodiless_requests_and_rate_zero_watch_nothing() {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        drop(tx);
        let empty = ClientBody::new(http_body_util::Empty::<Bytes>::new(), &limits(1000, 100));
        assert!(empty.pace.is_none());
        let off = ClientBody::new(Feed(rx), &limits(1000, 0));
        assert!(off.pace.is_none());
    }

    #[tokio::test]
    async fn a_body_over_max_body_fails_and_stays_failed() {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = Limits {
            max_body: 10,
            ..limits(1000, 0)
        };
        let mut b = ClientBody::new(Feed(rx), &limits);
        tx.send(Bytes::from_static(b"0123456789")).expect("send");
        assert_eq!(next(&mut b).await.expect("frame").expect("data"), 10);
        tx.send(Bytes::from_static(b"x")).expect("send");
        for _ in 0..2 {
            match next(&mut b).await {
                Some(Err(e)) => assert_eq!(ClientFault::of(&e), ClientFault::TooLarge),
                other => panic!("expected TooLarge, got {other:?}"),
            }
        }
        assert!(!b.is_end_stream());
        assert_eq!(b.watch().and_then(|w| w.get()), Some(ClientFault::TooLarge));
    }
}
