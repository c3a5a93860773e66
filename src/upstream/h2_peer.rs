//! What one HTTP/2 backend connection allows and carries: the backend's
//! SETTINGS_MAX_CONCURRENT_STREAMS, read from its first SETTINGS frame by a tap on the
//! connection's reads (hyper does not expose the peer's settings), and the streams in
//! flight on it, each held by a `Slot` that gives it back when dropped.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The limit the h2 crate applies until the backend's SETTINGS arrive (hyper's
/// `initial_max_send_streams`): a backend whose first SETTINGS do not name a limit allows
/// any number (RFC 9113 6.5.2).
const BEFORE_SETTINGS: usize = 100;
/// SETTINGS frame type and its MAX_CONCURRENT_STREAMS identifier (RFC 9113 6.5).
const SETTINGS: u8 = 0x4;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One HTTP/2 connection's stream limit and streams in flight.
#[derive(Debug)]
pub(super) struct Peer {
    active: AtomicUsize,
    max: AtomicUsize,
    born: Instant,
    /// When the connection last became idle (its last stream ended), in ns since `born`.
    idle_since: AtomicU64,
    settled: AtomicBool,
    settings: Notify,
}

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(BEFORE_SETTINGS),
            born: Instant::now(),
            idle_since: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            settings: Notify::new(),
        }
    }
}

impl Peer {
    /// Streams in flight.
    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Since when no stream is in flight (`None` while one is).
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.active() > 0 {
            return None;
        }
        let ns = self.idle_since.load(Ordering::Relaxed);
        Some(self.born + std::time::Duration::from_nanos(ns))
    }

    /// A stream, when fewer than the backend's limit are in flight. Callers that may race
    /// for the last stream take them under one lock (`H2Conns`); slots are given back
    /// from anywhere.
    pub(super) fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        if self.active() >= self.max.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.slot())
    }

    /// A stream whatever the limit (the request that opened the connection).
    pub(super) fn slot(self: &Arc<Self>) -> Slot {
        self.active.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }

    /// Wait until the backend's SETTINGS were read (or the connection ended), at most until
    /// `deadline`; the limit stays at the h2 crate's default otherwise.
    pub(super) async fn settled(&self, deadline: Instant) {
        let notified = self.settings.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }

    fn settle(&self, max: Option<usize>) {
        if let Some(max) = max {
            self.max.store(max, Ordering::Relaxed);
        }
        self.settled.store(true, Ordering::Release);
        self.settings.notify_waiters();
    }
}

/// One stream on a shared HTTP/2 connection, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<Peer>);

impl Drop for Slot {
    fn drop(&mut self) {
        let peer = &self.0;
        if peer.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ns = u64::try_from(peer.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
            peer.idle_since.store(ns, Ordering::Relaxed);
        }
    }
}

/// Reads the first frame the backend sends (its SETTINGS, RFC 9113 3.4), byte by byte
/// across reads, then nothing more.
#[derive(Debug, Default)]
struct SettingsReader {
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes still to read.
    left: usize,
    entry: [u8; 6],
    entry_len: usize,
    max: Option<usize>,
}

impl SettingsReader {
    /// Feed bytes read from the backend; `Some(max)` once the frame is read (`max`: its
    /// limit, `None` when it names none).
    fn feed(&mut self, bytes: &[u8]) -> Option<Option<usize>> {
        for &b in bytes {
            if self.head_len < 9 {
                self.head[self.head_len] = b;
                self.head_len += 1;
                if self.head_len == 9 {
                    let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                    if self.head[3] != SETTINGS {
                        // Not a server preface: leave the limit to the h2 crate's default.
                        return Some(Some(BEFORE_SETTINGS));
                    }
                    self.left = len as usize;
                    if self.left == 0 {
                        return self.finish();
                    }
                }
                continue;
            }
            self.entry[self.entry_len] = b;
            self.entry_len += 1;
            self.left -= 1;
            if self.entry_len == 6 {
                self.entry_len = 0;
                let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                if id == MAX_CONCURRENT_STREAMS {
                    let v = u32::from_be_bytes([
                        self.entry[2],
                        self.entry[3],
                        self.entry[4],
                        self.entry[5],
                    ]);
                    self.max = Some(usize::try_from(v).unwrap_or(usize::MAX));
                }
            }
            if self.left == 0 {
                return self.finish();
            }
        }
        None
    }

    fn finish(&mut self) -> Option<Option<usize>> {
        // No limit named: any number of streams.
        Some(Some(self.max.unwrap_or(usize::MAX)))
    }
}

/// A backend connection's reads passed through `SettingsReader` until its first frame was
/// read; writes untouched.
pub(super) struct Tap<S> {
    io: S,
    reader: Option<SettingsReader>,
    peer: Arc<Peer>,
}

impl<S> Tap<S> {
    pub(super) fn new(io: S, peer: Arc<Peer>) -> Tap<S> {
        Tap {
            io,
            reader: Some(SettingsReader::default()),
            peer,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(reader) = this.reader.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        let outcome = match &polled {
            // An error or the end before the frame: nothing more to wait for.
            Poll::Ready(Err(_)) => Some(None),
            Poll::Ready(Ok(())) if read.is_empty() => Some(None),
            Poll::Ready(Ok(())) => reader.feed(read),
            Poll::Pending => None,
        };
        if let Some(max) = outcome {
            this.reader = None;
            this.peer.settle(max);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let len = (entries.len() * 6) as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([SETTINGS, 0, 0, 0, 0, 0]);
        for (id, v) in entries {
            f.extend(id.to_be_bytes());
            f.extend(v.to_be_bytes());
        }
        f
    }

    #[test]
    fn the_limit_of_the_first_settings_frame_split_anywhere() {
        let frame = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 4), (0x5, 16_384)]);
        for cut in 0..=frame.len() {
            let mut r = SettingsReader::default();
            let first = r.feed(&frame[..cut]);
            let got = first.or_else(|| r.feed(&frame[cut..]));
            assert_eq!(got, Some(Some(4)), "cut at {cut}");
        }
        // Bytes after the frame are not looked at.
        let mut r = SettingsReader::default();
        let mut more = settings(&[(MAX_CONCURRENT_STREAMS, 7)]);
        more.extend(settings(&[(MAX_CONCURRENT_STREAMS, 1)]));
        assert_eq!(r.feed(&more), Some(Some(7)));
    }

    #[test]
    fn no_limit_named_means_any_number() {
        let mut r = SettingsReader::default();
        assert_eq!(r.feed(&settings(&[])), Some(Some(usize::MAX)));
        let mut r = SettingsReader::default();
        assert_eq!(r.feed(&settings(&[(0x4, 1 << 20)])), Some(Some(usize::MAX)));
        // Not a SETTINGS frame first: the h2 crate's default stays.
        let mut r = SettingsReader::default();
        let mut ping = settings(&[]);
        ping[3] = 0x6;
        assert_eq!(r.feed(&ping), Some(Some(BEFORE_SETTINGS)));
    }

    #[tokio::test(start_paused = true)]
    async fn slots_up_to_the_limit_and_back_when_dropped() {
        let peer = Arc::new(Peer::default());
        peer.settle(Some(2));
        peer.settled(Instant::now()).await;
        let a = peer.try_slot().expect("first");
        let b = peer.try_slot().expect("second");
        assert!(peer.try_slot().is_none(), "the backend allows two");
        drop(a);
        let _c = peer.try_slot().expect("one given back");
        assert_eq!(peer.active(), 2);
        assert_eq!(peer.idle_since(), None);
        drop(b);
        assert_eq!(peer.active(), 1);
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        drop(_c);
        assert_eq!(
            peer.idle_since(),
            Some(Instant::now()),
            "idle since its last stream ended"
        );
        // Not settled: the wait ends at the deadline.
        let unsettled = Peer::default();
        let start = Instant::now();
        unsettled
            .settled(start + std::time::Duration::from_secs(2))
            .await;
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(2));
    }
}
