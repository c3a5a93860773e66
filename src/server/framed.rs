//! The client side of an HTTP/1 connection as hyper sees it: the bytes a `Framer` let
//! through, reads through one per-worker buffer, small vectored writes sent with one
//! `send`, a backend's interim (1xx) responses written when hyper flushes (see
//! `upstream::interim`), the bounded wait for a request head (`HeadWait`), and parking: a
//! keep-alive connection idle for `PARK_AFTER` is handed back without hyper's buffers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conn::idle::Activity;
use super::h1_gate::Framer;
use crate::config::Limits;
use crate::proxy::ConnContext;

/// A keep-alive connection idle (between requests, everything written) this long is parked:
/// its reads end (an end of input hyper takes for a client that closed at a request
/// boundary), hyper's connection and its two 8 KiB buffers are dropped, and `serve_h1`
/// waits for the socket to become readable with no buffer at all, then serves it anew. A
/// busy connection never parks.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// The TCP socket under a client stream, whose readiness a parked connection waits for;
/// `None` while it is not registered with the reactor (`LazyTcp`): nothing was found
/// unreadable yet, so it is read again at once.
pub(crate) trait Socket {
    fn tcp(&self) -> Option<&tokio::net::TcpStream>;
}

impl Socket for super::lazy_tcp::LazyTcp {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        self.tokio()
    }
}

impl Socket for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self.get_ref().0)
    }
}

/// What the wait for a request head says.
enum Wait {
    Waiting,
    /// Idle long enough to park.
    Park,
    /// No head in time: the connection closes.
    Expired,
}

/// Vectored writes up to this size are copied into one buffer and sent with one `send`.
const COALESCE_MAX: usize = 16 * 1024;

thread_local! {
    /// Where `Framed` reads client bytes before the framer looks at them, and gathers small
    /// vectored writes (one per worker, `COALESCE_MAX` bytes).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; COALESCE_MAX].into_boxed_slice());
}

/// The wait for a request head: at most `timeout` (the listener's `header_timeout`, or its
/// idle timeout) from the end of the last request, or from the connection's start. Kept
/// here rather than as hyper's `header_read_timeout`, which makes a new timer for every
/// request; this one timer per connection only moves its deadline (one compare-and-swap).
pub(crate) struct HeadWait {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl HeadWait {
    pub(crate) fn new(activity: Arc<Activity>, timeout: Duration) -> HeadWait {
        HeadWait {
            activity,
            timeout,
            timer: None,
        }
    }

    /// Whether the client has kept us waiting for a head too long, or (when `parkable`)
    /// the connection has been idle for `PARK_AFTER`. While a request of the connection is
    /// still being answered the wait does not count, but the timer stays armed (a lease
    /// renewed from now), so that the connection is polled again after that answer ends
    /// even if nothing else wakes it.
    fn poll(&mut self, cx: &mut Context<'_>, parkable: bool) -> Wait {
        let answering = self.activity.active() > 0;
        let expire = self.activity.last_activity() + self.timeout;
        let park = self.activity.last_activity() + PARK_AFTER;
        let deadline = if answering {
            Instant::now() + self.timeout
        } else if parkable && park < expire {
            park
        } else {
            expire
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Wait::Waiting;
        }
        if answering {
            timer.as_mut().reset(Instant::now() + self.timeout);
            let _ = timer.as_mut().poll(cx);
            return Wait::Waiting;
        }
        if Instant::now() >= expire {
            return Wait::Expired;
        }
        // The park deadline passed (it is the timer's only when `parkable`).
        Wait::Park
    }

    /// When the wait for the next head ends.
    pub(crate) fn deadline(&self) -> Instant {
        self.activity.last_activity() + self.timeout
    }
}

/// An HTTP/1 client stream behind the `Framer`.
pub struct Framed<T> {
    inner: T,
    framer: Framer,
    out: Vec<u8>,
    pos: usize,
    wait: Option<HeadWait>,
    /// A small response waits once for the worker's other ready tasks (see
    /// `poll_write_vectored`); set while it waits.
    deferred: bool,
    /// The connection's facts: its interim responses.
    ctx: Arc<ConnContext>,
    /// Interim responses being written.
    interim: Option<Box<Writing>>,
    /// Parking is allowed (`serve_h1`, which serves the connection anew afterwards).
    parking: bool,
    /// Parked: reads end until `unpark`.
    parked: bool,
    /// Written since the last completed flush: hyper may still hold bytes to write.
    unflushed: bool,
}

/// Interim responses being written, how far, and the count of heads they end with.
struct Writing {
    bytes: Vec<u8>,
    pos: usize,
    upto: u64,
}

impl<T> Framed<T> {
    pub(crate) fn new(
        inner: T,
        limits: &Limits,
        wait: HeadWait,
        ctx: Arc<ConnContext>,
    ) -> Framed<T> {
        Framed {
            inner,
            framer: Framer::new(limits),
            out: Vec::new(),
            pos: 0,
            wait: Some(wait),
            deferred: false,
            ctx,
            interim: None,
            parking: false,
            parked: false,
            unflushed: false,
        }
    }

    /// Let the connection park when idle (see `PARK_AFTER`).
    pub(crate) fn allow_parking(&mut self) {
        self.parking = true;
    }

    /// Whether reads ended because the connection parked (rather than the client closing).
    pub(crate) fn parked(&self) -> bool {
        self.parked
    }

    /// Serve again after parking; `unread` is whatever hyper had read and not used.
    pub(crate) fn unpark(&mut self, unread: &[u8]) {
        self.parked = false;
        if !unread.is_empty() {
            self.out = unread.to_vec();
            self.pos = 0;
        }
    }

    /// The stream under the framer.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The stream, without the framer.
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }

    /// When the wait for the next request head ends.
    pub(crate) fn head_deadline(&self) -> Option<Instant> {
        self.wait.as_ref().map(HeadWait::deadline)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        // Bounded: each round either returns or consumes a read from the client.
        loop {
            if this.pos < this.out.len() {
                let k = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + k]);
                this.pos += k;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.framer.failed() {
                // Over `max_body`: an error the proxy recognises (413, the client's fault).
                let error = match this.framer.over_max_body() {
                    Some(limit) => io::Error::new(
                        io::ErrorKind::InvalidData,
                        crate::upstream::client_fault::TooLarge { limit },
                    ),
                    None => io::Error::new(io::ErrorKind::InvalidData, "bad request body framing"),
                };
                return Poll::Ready(Err(error));
            }
            if this.framer.closed() {
                return Poll::Ready(Ok(()));
            }
            if this.framer.passing_through() {
                if this.wait.is_some() || this.out.capacity() > 0 {
                    // A tunnel (WebSocket, CONNECT) or HTTP/2 from here on: no head to wait
                    // for, and nothing of the gate to keep (an idle tunnel holds no timer,
                    // whose waker would keep the finished HTTP/1 connection task alive).
                    this.wait = None;
                    this.out = Vec::new();
                    this.framer.release_buffers();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // The worker's read buffer: no per-connection buffer, nothing zeroed per read.
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(false)),
                    Poll::Ready(Ok(())) => {
                        this.framer.feed(rb.filled(), &mut this.out);
                        Poll::Ready(Ok(true))
                    }
                }
            });
            match read {
                Poll::Pending => {
                    if !this.framer.in_head() {
                        return Poll::Pending;
                    }
                    // Idle between requests with everything written: hyper holds nothing
                    // of this connection that parking would lose.
                    let parkable = this.parking
                        && this.framer.at_rest()
                        && !this.unflushed
                        && this.interim.is_none();
                    let Some(wait) = this.wait.as_mut() else {
                        return Poll::Pending;
                    };
                    return match wait.poll(cx, parkable) {
                        Wait::Waiting => Poll::Pending,
                        Wait::Expired => {
                            tracing::debug!("no complete request head in time: closing");
                            Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no complete request head within the header/idle timeout",
                            )))
                        }
                        Wait::Park => {
                            this.parked = true;
                            this.out = Vec::new();
                            this.pos = 0;
                            this.framer.release_buffers();
                            wait.timer = None;
                            Poll::Ready(Ok(()))
                        }
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    // EOF: hand on an incomplete head for hyper to judge.
                    this.framer.end_of_input(&mut this.out);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        let inner = &mut this.inner;
        // A small response (head and body) goes out with one `send` rather than `writev`,
        // whose iovec import and VFS path cost more than copying a few hundred bytes.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() > 1 && total <= COALESCE_MAX {
            // Sent after the tasks that were ready before it (HAProxy sends at the end of
            // its loop too): the responses of one round of events leave together, and the
            // client reads them with one wake-up instead of one each.
            if !this.deferred {
                this.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.deferred = false;
            return SCRATCH.with_borrow_mut(|scratch| {
                let mut len = 0;
                for b in bufs {
                    scratch[len..len + b.len()].copy_from_slice(b);
                    len += b.len();
                }
                Pin::new(inner).poll_write(cx, &scratch[..len])
            });
        }
        Pin::new(inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes once everything it wrote before went to `poll_write`: a backend's
    /// interim responses go out here, after the previous response and before the next one
    /// (whose request waits for them).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(interim) = this.ctx.interim.get() {
            if this.interim.is_none() {
                this.interim = interim.take().map(|(bytes, upto)| {
                    Box::new(Writing {
                        bytes,
                        pos: 0,
                        upto,
                    })
                });
            }
            if let Some(w) = this.interim.as_mut() {
                while w.pos < w.bytes.len() {
                    let rest = &w.bytes[w.pos..];
                    let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, rest))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    w.pos += n;
                }
                interim.wrote(w.upto);
                this.interim = None;
            }
        }
        std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        if let Some(wait) = &this.wait {
            wait.activity.flushed(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// A parked connection stays open: hyper ends it as if the client had closed.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
