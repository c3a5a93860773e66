//! Access logs (`access_log: {format, path, buffer}`): one line per request, JSON (default)
//! or combined, to stdout, stderr or a file that SIGUSR1 reopens (logrotate).
//!
//! The hot path never formats, writes or waits: when a response ends it hands an `Entry`
//! (cheap clones of what it already has) to the runtime's bounded queue
//! (`runtime::access_queue`) with `try_send`; a full queue drops the line and counts it. One writer thread formats and writes in batches through a
//! buffer, flushed after each batch (lines reach the file within about 10 ms).

mod format;
mod writer;

pub use crate::runtime::access_queue::{AccessMsg, AccessQueue, Entry, Timing};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::runtime::Runtime;

/// Start the server's writer thread and SIGUSR1 handler (once per server, inside the main
/// tokio runtime). The queue's size is `access_log.buffer` of the config at start.
pub fn start(runtime: &Arc<Runtime>) {
    let snapshot = runtime.snapshot();
    let buffer = snapshot
        .config
        .access_log
        .as_ref()
        .map_or(16_384, |a| a.buffer);
    let queue = snapshot.access_log.clone();
    let Some(rx) = queue.open(buffer) else {
        return;
    };
    let weak = Arc::downgrade(runtime);
    let spawned = std::thread::Builder::new()
        .name("autolb-access-log".into())
        .spawn(move || writer::run(weak, queue, rx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log writer: no access log");
    }
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGUSR1: the access log is not reopened on it");
                return;
            }
        };
        while usr1.recv().await.is_some() {
            let Some(runtime) = weak.upgrade() else {
                return;
            };
            tracing::info!("SIGUSR1: reopening the access log");
            runtime
                .snapshot()
                .access_log
                .reopen
                .store(true, Ordering::Relaxed);
        }
    });
}

/// Append `autolb_access_log_lines_total{result}` (written, dropped, failed).
pub fn render_metrics(out: &mut String, queue: &AccessQueue) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP autolb_access_log_lines_total Access log lines by result (dropped: the queue was full; failed: the write failed)."
    );
    let _ = writeln!(out, "# TYPE autolb_access_log_lines_total counter");
    for (result, n) in [
        ("written", &queue.written),
        ("dropped", &queue.dropped),
        ("failed", &queue.failed),
    ] {
        let _ = writeln!(
            out,
            "autolb_access_log_lines_total{{result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}
