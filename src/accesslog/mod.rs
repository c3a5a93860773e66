//! Access logs (`access_log: {format, path, buffer}`): one line per request, JSON (default)
//! or combined, to stdout, stderr or a file that SIGUSR1 reopens (logrotate).
//!
//! The hot path never formats, writes or waits: when a response ends it hands an `Entry`
//! (cheap clones of what it already has) to a bounded queue with `try_send`; a full queue
//! drops the line and counts it. One writer thread formats and writes in batches through a
//! buffer, flushed after each batch (lines reach the file within about 10 ms).

mod format;
mod writer;

pub use format::{combined, json};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Uri, Version};

use crate::runtime::{Backend, Runtime, Snapshot};

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

enum Msg {
    Line(Box<Entry>),
    /// Write out everything queued before, then answer.
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();
static REOPEN: AtomicBool = AtomicBool::new(false);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Start the writer thread and the SIGUSR1 handler (once per process, inside the main tokio
/// runtime). The queue's size is `access_log.buffer` of the config at start.
pub fn start(runtime: Arc<Runtime>) {
    let buffer = runtime
        .snapshot()
        .config
        .access_log
        .as_ref()
        .map_or(16_384, |a| a.buffer);
    let (tx, rx) = sync_channel(buffer);
    if QUEUE.set(tx).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("autolb-access-log".into())
        .spawn(move || writer::run(runtime, rx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log writer: no access log");
    }
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGUSR1: the access log is not reopened on it");
                return;
            }
        };
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access log");
            REOPEN.store(true, Ordering::Relaxed);
        }
    });
}

/// Queue `entry` for the writer, or drop it when the queue is full: never waits.
pub fn submit(entry: Entry) {
    let Some(tx) = QUEUE.get() else {
        return;
    };
    match tx.try_send(Msg::Line(Box::new(entry))) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Wait (at most `timeout`) until every line queued so far is written: at shutdown.
pub fn flush(timeout: Duration) {
    let Some(tx) = QUEUE.get() else {
        return;
    };
    let (done, wait) = sync_channel(1);
    let deadline = std::time::Instant::now() + timeout;
    let mut msg = Msg::Flush(done);
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

/// Append `autolb_access_log_lines_total{result}` (written, dropped, failed).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP autolb_access_log_lines_total Access log lines by result (dropped: the queue was full; failed: the write failed)."
    );
    let _ = writeln!(out, "# TYPE autolb_access_log_lines_total counter");
    for (result, n) in [
        ("written", &WRITTEN),
        ("dropped", &DROPPED),
        ("failed", &FAILED),
    ] {
        let _ = writeln!(
            out,
            "autolb_access_log_lines_total{{result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}
