//! A backend's 1xx informational responses (103 Early Hints, 102 ...), forwarded to an
//! HTTP/1.1 client ahead of the final response. hyper's server sends no 1xx of a service's
//! choosing, so they go around it: the upstream clients encode each into the connection's
//! `Interim`, and `server::framed` writes them into the client connection when hyper flushes,
//! that is after every byte hyper wrote before (the previous response included). A request
//! waits until its interim responses are written before it hands its final response to
//! hyper, which keeps them in front of it.
//!
//! Not forwarded: 100 Continue (hyper answers a client's `Expect` itself) and 101 (an
//! upgrade is a final answer); nothing to HTTP/1.0 clients (RFC 9110 15.2) nor to HTTP/2
//! clients (hyper's server cannot send a 1xx there yet).

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::{HeaderMap, StatusCode};

use super::hop_by_hop::strip_hop_by_hop;

/// Interim heads waiting for a client that does not read are dropped past this many bytes:
/// hyper's client hands them over without waiting, and a backend may send any number.
const MAX_PENDING: usize = 64 * 1024;

/// A connection's `Interim`, made when a backend first sends it a 1xx (most connections
/// never need one).
pub type Slot = std::sync::OnceLock<std::sync::Arc<Interim>>;

/// The interim responses of one client connection, on their way to it.
#[derive(Debug, Default)]
pub struct Interim {
    /// Encoded heads not yet taken by the connection.
    buf: Mutex<Vec<u8>>,
    /// Heads pushed, and heads written to the client so far.
    pushed: AtomicU64,
    written: AtomicU64,
    /// The connection's task: woken to write (a push from another task) and after writing.
    task: AtomicWaker,
}

impl Interim {
    /// Is this informational status forwarded?
    pub fn forwards(status: StatusCode) -> bool {
        status.is_informational()
            && status != StatusCode::CONTINUE
            && status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// Queue an interim response for the client (hop-by-hop fields left out) and wake the
    /// connection to write it; dropped when `MAX_PENDING` bytes already wait (an interim
    /// response is advice, the final one is what counts).
    pub fn push(&self, status: StatusCode, fields: &HeaderMap) {
        let mut fields = fields.clone();
        strip_hop_by_hop(&mut fields, false);
        fields.remove(http::header::CONTENT_LENGTH);
        let mut buf = match self.buf.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buf.len() >= MAX_PENDING {
            return;
        }
        buf.extend_from_slice(b"HTTP/1.1 ");
        buf.extend_from_slice(status.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (name, value) in &fields {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        self.pushed.fetch_add(1, Ordering::AcqRel);
        drop(buf);
        self.task.wake();
    }

    /// The bytes to write now, and the count of heads they end with (`None`: nothing new).
    pub fn take(&self) -> Option<(Vec<u8>, u64)> {
        if self.pushed.load(Ordering::Acquire) == self.written.load(Ordering::Acquire) {
            return None;
        }
        let mut buf = match self.buf.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buf.is_empty() {
            return None;
        }
        // Pushes count under the lock: the buffer holds exactly the heads up to here.
        let upto = self.pushed.load(Ordering::Acquire);
        Some((std::mem::take(&mut *buf), upto))
    }

    /// The heads up to `upto` are written to the client.
    pub fn wrote(&self, upto: u64) {
        self.written.store(upto, Ordering::Release);
        self.task.wake();
    }

    /// Wait until every head pushed so far is written to the client (at once when none is
    /// waiting, the common case).
    pub async fn flushed(&self) {
        let target = self.pushed.load(Ordering::Acquire);
        poll_fn(|cx| {
            if self.written.load(Ordering::Acquire) >= target {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            match self.written.load(Ordering::Acquire) >= target {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }

    /// Let a push from another task (hyper's client) wake the connection's task.
    pub fn watch(&self, cx: &Context<'_>) {
        self.task.register(cx.waker());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_encoded_without_hop_by_hop_fields() {
        let i = Interim::default();
        assert!(i.take().is_none());
        let mut fields = HeaderMap::new();
        fields.append("link", "</a.css>; rel=preload".parse().expect("value"));
        fields.append("link", "</b.js>; rel=preload".parse().expect("value"));
        fields.append("connection", "keep-alive".parse().expect("value"));
        i.push(StatusCode::EARLY_HINTS, &fields);
        i.push(StatusCode::PROCESSING, &HeaderMap::new());
        let (bytes, upto) = i.take().expect("two heads");
        assert_eq!(upto, 2);
        assert_eq!(
            String::from_utf8(bytes).expect("ascii"),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nlink: </b.js>; rel=preload\r\n\r\n\
             HTTP/1.1 102 Processing\r\n\r\n"
        );
        assert!(i.take().is_none());
        i.wrote(upto);
        assert!(!Interim::forwards(StatusCode::CONTINUE));
        assert!(!Interim::forwards(StatusCode::SWITCHING_PROTOCOLS));
        assert!(!Interim::forwards(StatusCode::OK));
        assert!(Interim::forwards(StatusCode::EARLY_HINTS));
    }

    #[test]
    fn heads_for_a_client_that_does_not_read_are_bounded() {
        let i = Interim::default();
        let mut fields = HeaderMap::new();
        fields.append("link", "</a.css>; rel=preload".parse().expect("value"));
        for _ in 0..100_000 {
            i.push(StatusCode::EARLY_HINTS, &fields);
        }
        let (bytes, upto) = i.take().expect("heads");
        assert!(bytes.len() < MAX_PENDING + 1024, "{}", bytes.len());
        // Every head kept is whole, and the count covers them, so no request waits forever.
        assert!(bytes.ends_with(b"\r\n\r\n"));
        i.wrote(upto);
        assert!(i.take().is_none());
    }

    #[tokio::test]
    async fn a_request_waits_until_its_heads_are_written() {
        let i = std::sync::Arc::new(Interim::default());
        // Nothing pushed: no wait.
        i.flushed().await;
        i.push(StatusCode::EARLY_HINTS, &HeaderMap::new());
        let writer = {
            let i = i.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let (_, upto) = i.take().expect("a head");
                i.wrote(upto);
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), i.flushed())
            .await
            .expect("woken once written");
        writer.await.expect("writer");
    }
}
