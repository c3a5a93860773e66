//! The client side of an HTTP/1 connection as hyper sees it: the bytes a `Framer` let
//! through, reads through one per-worker buffer, small vectored writes sent with one
//! `send`, a backend's interim (1xx) responses written when hyper flushes (see
//! `proxy::interim`), and the bounded wait for a request head (`HeadWait`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conn::idle::Activity;
use super::framing::Framer;
use crate::config::Limits;
use crate::proxy::ConnContext;

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

    /// The client has kept us waiting for a head too long. While a request of the
    /// connection is still being answered the wait does not count, but the timer stays
    /// armed (a lease renewed from now), so that the connection is polled again after that
    /// answer ends even if nothing else wakes it.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let answering = self.activity.active() > 0;
        let deadline = if answering {
            Instant::now() + self.timeout
        } else {
            self.activity.last_activity() + self.timeout
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if answering {
            timer.as_mut().reset(Instant::now() + self.timeout);
            let _ = timer.as_mut().poll(cx);
            return false;
        }
        true
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
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
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
                        crate::proxy::client_fault::TooLarge { limit },
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
                    let waiting_for_head = this.framer.in_head();
                    if waiting_for_head && this.wait.as_mut().is_some_and(|w| w.expired(cx)) {
                        tracing::debug!("no complete request head in time: closing");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no complete request head within the header/idle timeout",
                        )));
                    }
                    return Poll::Pending;
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
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
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
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
