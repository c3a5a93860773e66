//! The access log's queue, owned by a server's runtime: the hot path hands a finished
//! request's `Entry` over with `try_send` (never waits; a full queue drops the line and
//! counts it), `accesslog`'s writer thread takes entries out, and the counters of written,
//! dropped and failed lines live here. Before the writer starts, entries are discarded.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Uri, Version};

use super::{Backend, Snapshot};

/// Where a proxied request's time went before its response head, for the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Waiting for the pool: a first instance (scale from zero), a `limits:` slot.
    pub queued: std::time::Duration,
    /// Opening the answering attempt's connection (`None`: a reused connection).
    pub connect: Option<std::time::Duration>,
    /// From the start of the answering attempt (connect included) to its response head.
    pub ttfb: std::time::Duration,
}

/// One finished request, as the writer formats it.
#[derive(Debug)]
pub struct Entry {
    /// When the request head arrived.
    pub start: SystemTime,
    /// Until the end of the response body (or of the 101, for an upgrade).
    pub duration: Duration,
    pub client: IpAddr,
    pub method: Method,
    /// The request's authority (Host, or the absolute URI's).
    pub host: Option<HeaderValue>,
    /// As routed: the path in normal form (see `proxy::normalize`).
    pub uri: Uri,
    /// The path and query as the client sent them, when normalization changed them.
    pub original: Option<PathAndQuery>,
    pub version: Version,
    pub status: u16,
    /// Body bytes sent to the client (compressed size when compressed).
    pub bytes: u64,
    /// The body went out whole (false: the client or the backend broke it off).
    pub complete: bool,
    /// For the listener's and pool's names.
    pub snapshot: Arc<Snapshot>,
    pub listener: usize,
    pub pool: Option<usize>,
    pub backend: Option<Arc<Backend>>,
    /// Attempts the request took (0: autolb answered without a backend).
    pub tries: u32,
    pub tls: Option<&'static str>,
    pub request_id: HeaderValue,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    /// `gzip` or `br` when autolb compressed the response.
    pub encoding: Option<&'static str>,
    /// Where the time went before the response head (a response from a backend).
    pub timing: Option<Timing>,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Why the response did not go out whole: `client_closed`, `backend_closed`,
    /// `backend_timeout` or `compression` (`None`: complete).
    pub abort: Option<&'static str>,
    /// A gRPC call's `grpc-status` (from the trailers, or the headers of a Trailers-Only
    /// answer).
    pub grpc_status: Option<u8>,
    /// How the HTTP cache answered (`hit`, `miss`, `stale`, `bypass`; `None`: no cache).
    pub cache: Option<&'static str>,
    /// The client's verified certificate (`client_auth`): its subject is logged.
    pub client_cert: Option<Arc<crate::tls::client_auth::ClientIdentity>>,
}

/// What goes through the queue.
pub enum AccessMsg {
    Line(Box<Entry>),
    /// Write out everything queued before, then answer.
    Flush(SyncSender<()>),
}

#[derive(Debug, Default)]
pub struct AccessQueue {
    tx: OnceLock<SyncSender<AccessMsg>>,
    /// SIGUSR1 asked for the file to be reopened.
    pub reopen: AtomicBool,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl AccessQueue {
    /// The writer's end of a queue of `buffer` entries, once: `None` when the writer was
    /// already started.
    pub fn open(&self, buffer: usize) -> Option<Receiver<AccessMsg>> {
        let (tx, rx) = sync_channel(buffer);
        self.tx.set(tx).ok().map(|()| rx)
    }

    /// Queue `entry` for the writer, or drop it when the queue is full: never waits.
    pub fn submit(&self, entry: Entry) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            tx.try_send(AccessMsg::Line(Box::new(entry)))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait (at most `timeout`) until every line queued so far is written: at shutdown.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        let (done, wait) = sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = AccessMsg::Flush(done);
        // The queue may be full: retry until the deadline rather than block.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = wait.recv_timeout(left);
    }
}
