//! The byte pump of an upgraded (WebSocket) connection: both directions in one task, each
//! read straight into a per-thread scratch buffer and written on at once, so an idle tunnel
//! holds no buffer at all; only bytes a slow peer cannot take yet are kept, per tunnel.
//!
//! Frames are not parsed beyond their headers (see `frames`), which lets `close` put a Close
//! frame between two frames in each direction, then wait for the peers' replies.

mod ws_frames;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use ws_frames::{close_frame, FrameTracker};

/// Read size per poll (one scratch buffer per worker thread).
const SCRATCH: usize = 16 * 1024;

/// Reads per direction and poll before yielding to the other tasks of the worker.
const MAX_ROUNDS: usize = 32;

/// Once closing (or once one side has finished), how long the other side may take.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Why autolb closes a tunnel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The backend drained past its `drain_timeout`.
    Drain,
    /// Silent both ways for `websocket_idle`.
    Idle,
    /// autolb is shutting down.
    Shutdown,
}

impl CloseReason {
    fn text(self) -> &'static str {
        match self {
            CloseReason::Drain => "going away",
            CloseReason::Idle => "idle timeout",
            CloseReason::Shutdown => "going away: shutting down",
        }
    }
}

/// Code sent in autolb's own Close frames: 1001, "going away".
pub const GOING_AWAY: u16 = 1001;

/// How a tunnel ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished (after a close handshake, or EOF).
    Closed,
    /// A side did not finish within `CLOSE_GRACE`: both connections were dropped.
    Abandoned,
    /// A read or write failed (reset, broken pipe).
    Error(io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bytes pass through.
    Forward,
    /// A Close frame goes to the destination at the next frame boundary.
    Inject,
    /// Our Close went out: the source's frames are dropped until its own Close (the reply).
    Discard,
}

/// One direction: source -> destination.
#[derive(Debug)]
struct Half {
    frames: FrameTracker,
    /// Read but not yet written (only when the destination pushed back).
    pending: Vec<u8>,
    pos: usize,
    needs_flush: bool,
    read_eof: bool,
    done: bool,
    /// A Close frame already passed in this direction.
    close_passed: bool,
    mode: Mode,
    /// Whether our frames to the destination are masked (autolb acting as a client).
    masked: bool,
    reason: CloseReason,
    bytes: u64,
}

impl Half {
    fn new(masked: bool) -> Half {
        Half {
            frames: FrameTracker::default(),
            pending: Vec::new(),
            pos: 0,
            needs_flush: false,
            read_eof: false,
            done: false,
            close_passed: false,
            mode: Mode::Forward,
            masked,
            reason: CloseReason::Drain,
            bytes: 0,
        }
    }

    /// Arrange a Close frame to the destination, unless one already went that way or the
    /// destination is shut.
    fn close(&mut self, reason: CloseReason) {
        if self.mode == Mode::Forward && !self.close_passed && !self.done {
            self.mode = Mode::Inject;
            self.reason = reason;
        }
    }

    /// Write `data` straight from the scratch buffer; keep only what the peer refused.
    fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut W,
        data: &[u8],
    ) -> Poll<io::Result<()>> {
        let written = match Pin::new(&mut *dst).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => 0,
        };
        if written > 0 {
            self.needs_flush = true;
        }
        if written < data.len() {
            self.pending.extend_from_slice(&data[written..]);
        }
        Poll::Ready(Ok(()))
    }

    /// Run this direction until it must wait (`Pending`) or is finished (`Ready(Ok)`).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..MAX_ROUNDS {
            while self.pos < self.pending.len() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.needs_flush = true;
            }
            if !self.pending.is_empty() {
                // Give the memory back: an idle tunnel holds no buffer.
                self.pending = Vec::new();
                self.pos = 0;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                self.needs_flush = false;
            }
            if self.mode == Mode::Inject && self.frames.at_boundary() {
                self.pending = close_frame(GOING_AWAY, self.reason.text(), self.masked);
                self.mode = Mode::Discard;
                continue;
            }
            if self.read_eof {
                // The source is gone: pass the end on.
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH_BUF.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *src).poll_read(cx, &mut buf))?;
                let data = buf.filled();
                if data.is_empty() {
                    self.read_eof = true;
                    return Poll::Ready(Ok(()));
                }
                *active = true;
                crate::sched::cpu_share::note_work();
                self.bytes += data.len() as u64;
                let forward = match self.mode {
                    Mode::Forward => {
                        self.close_passed |= self.frames.advance(data, false).close;
                        data
                    }
                    Mode::Inject => {
                        // Up to the end of the current frame; the rest is dropped once our
                        // Close is out, except for noticing the source's own Close.
                        let first = self.frames.advance(data, true);
                        if first.close {
                            // That frame was the source's own Close: ours is not needed.
                            self.close_passed = true;
                            self.mode = Mode::Forward;
                            self.frames.advance(&data[first.consumed..], false);
                            return self.forward(cx, dst, data);
                        }
                        let head = first.consumed;
                        self.pending = close_frame(GOING_AWAY, self.reason.text(), self.masked);
                        self.mode = Mode::Discard;
                        if self.frames.advance(&data[head..], false).close {
                            self.read_eof = true;
                        }
                        let mut out = Vec::with_capacity(head + self.pending.len());
                        out.extend_from_slice(&data[..head]);
                        out.append(&mut self.pending);
                        self.pending = out;
                        return Poll::Ready(Ok(()));
                    }
                    Mode::Discard => {
                        if self.frames.advance(data, false).close {
                            // The reply to our Close: this direction is over.
                            self.read_eof = true;
                        }
                        return Poll::Ready(Ok(()));
                    }
                };
                self.forward(cx, dst, forward)
            });
            ready!(step)?;
        }
        // A busy direction yields now and then, so that the other one and other tunnels
        // of this worker get their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Both directions of one upgraded connection, with the idle timeout and the close logic.
pub struct Tunnel<C, B> {
    client: C,
    backend: B,
    /// client -> backend (autolb writes masked frames, as a client does).
    up: Half,
    /// backend -> client.
    down: Half,
    idle: Duration,
    last_active: Instant,
    /// Idle deadline, or the end of `CLOSE_GRACE` once `finishing`.
    timer: Pin<Box<Sleep>>,
    finishing: bool,
    closing: bool,
}

impl<C, B> Tunnel<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(client: C, backend: B, idle: Duration) -> Tunnel<C, B> {
        let now = Instant::now();
        Tunnel {
            client,
            backend,
            up: Half::new(true),
            down: Half::new(false),
            idle,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            finishing: false,
            closing: false,
        }
    }

    /// Bytes passed (client -> backend, backend -> client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Close both ways with 1001 at the next frame boundaries, then wait (at most
    /// `CLOSE_GRACE`) for the peers' replies.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.up.close(reason);
        self.down.close(reason);
        self.finish_within_grace();
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn finish_within_grace(&mut self) {
        if !self.finishing {
            self.finishing = true;
            self.timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
        }
    }

    /// Pump until both directions are finished, or the tunnel must be dropped.
    pub fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            let mut active = false;
            if !self.up.done {
                match self
                    .up
                    .poll(cx, &mut self.client, &mut self.backend, &mut active)
                {
                    Poll::Ready(Ok(())) => self.up.done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e)),
                    Poll::Pending => {}
                }
            }
            if !self.down.done {
                match self
                    .down
                    .poll(cx, &mut self.backend, &mut self.client, &mut active)
                {
                    Poll::Ready(Ok(())) => self.down.done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e)),
                    Poll::Pending => {}
                }
            }
            if self.up.done && self.down.done {
                return Poll::Ready(End::Closed);
            }
            if self.up.done || self.down.done {
                // WebSocket has no half-close: the other side gets a short grace.
                self.finish_within_grace();
            }
            if active {
                self.last_active = Instant::now();
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.finishing {
                return Poll::Ready(End::Abandoned);
            }
            let due = self.last_active + self.idle;
            if Instant::now() >= due {
                self.close(CloseReason::Idle);
            } else {
                // Activity since the timer was armed: re-arm it lazily, not on every read.
                self.timer.as_mut().reset(due);
            }
        }
    }
}

#[cfg(test)]
mod tests;
