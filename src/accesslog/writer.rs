//! The access log writer thread (one per server, ending with it): formats queued entries with the running config's format,
//! writes them through a buffer to its target, flushes after each batch (then rests a few
//! milliseconds, so that busy traffic is written in batches), and reopens the file on
//! SIGUSR1 (or when a reload names another target).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{format, AccessMsg as Msg, AccessQueue};
use crate::config::{AccessLog, AccessLogFormat, AccessLogTarget};
use crate::runtime::Runtime;

/// Most lines written between two flushes.
const BATCH: usize = 4096;
/// After a batch, the writer rests this long so that the next lines arrive as a batch: it is
/// not woken once per request (a wake-up is a syscall on the request's thread), and writes
/// go out in large chunks. Lines reach the file at most this much later.
const PAUSE: Duration = Duration::from_millis(10);
/// How often drops and failures are reported (when they grew).
const REPORT: Duration = Duration::from_secs(10);

/// The open target.
struct Sink {
    target: AccessLogTarget,
    out: BufWriter<Box<dyn Write + Send>>,
}

fn open(target: &AccessLogTarget) -> std::io::Result<Sink> {
    let out: Box<dyn Write + Send> = match target {
        AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::Stderr => Box::new(std::io::stderr()),
        AccessLogTarget::File(path) => Box::new(append(path)?),
    };
    Ok(Sink {
        target: target.clone(),
        out: BufWriter::with_capacity(64 * 1024, out),
    })
}

fn append(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

struct Writer {
    /// The server's runtime: the writer ends when it is gone (its queue with it).
    runtime: Weak<Runtime>,
    /// Its queue's counters.
    queue: Arc<AccessQueue>,
    sink: Option<Sink>,
    /// The settings lines are formatted with (the last seen, if access_log was removed).
    settings: Option<AccessLog>,
    reported: (u64, u64),
    reported_at: Instant,
    /// The last failed open: the next attempt waits `RETRY_OPEN` (or SIGUSR1).
    open_failed: Option<Instant>,
}

/// How long after a failed open the writer tries again by itself.
const RETRY_OPEN: Duration = Duration::from_secs(5);

impl Writer {
    /// Follow the running config: another target is opened (the old one flushed first).
    fn follow_config(&mut self) {
        let Some(runtime) = self.runtime.upgrade() else {
            return;
        };
        let current = runtime.snapshot().config.access_log.clone();
        if let Some(cfg) = current {
            let waiting = self.sink.is_none()
                && self.open_failed.is_some_and(|t| t.elapsed() < RETRY_OPEN)
                && self
                    .settings
                    .as_ref()
                    .is_some_and(|s| s.target == cfg.target);
            if !waiting && self.sink.as_ref().is_none_or(|s| s.target != cfg.target) {
                self.reopen(&cfg.target);
            }
            self.settings = Some(cfg);
        }
    }

    fn reopen(&mut self, target: &AccessLogTarget) {
        if let Some(mut old) = self.sink.take() {
            let _ = old.out.flush();
        }
        self.open_failed = None;
        match open(target) {
            Ok(s) => self.sink = Some(s),
            Err(e) => {
                self.open_failed = Some(Instant::now());
                tracing::error!(error = %e, target = ?target, "cannot open the access log: lines are dropped until it opens (SIGUSR1 retries)")
            }
        }
    }

    fn write(&mut self, entry: &super::Entry) {
        let Some(settings) = &self.settings else {
            return;
        };
        let mut line = match settings.format {
            AccessLogFormat::Json => format::json(entry),
            AccessLogFormat::Combined => format::combined(entry),
        };
        line.push('\n');
        let Some(sink) = self.sink.as_mut() else {
            self.queue.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match sink.out.write_all(line.as_bytes()) {
            Ok(()) => {
                self.queue.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.queue.failed.fetch_add(1, Ordering::Relaxed);
                self.failed(&e);
            }
        }
    }

    fn flush(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            if let Err(e) = sink.out.flush() {
                self.failed(&e);
            }
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        // Say it once per report period, not once per line.
        if self.reported_at.elapsed() >= REPORT || self.reported == (0, 0) {
            tracing::error!(error = %e, "access log write failed");
            self.reported_at = Instant::now();
        }
    }

    fn report(&mut self) {
        let now = (
            self.queue.dropped.load(Ordering::Relaxed),
            self.queue.failed.load(Ordering::Relaxed),
        );
        if now != self.reported && self.reported_at.elapsed() >= REPORT {
            tracing::warn!(
                dropped = now.0 - self.reported.0,
                failed = now.1 - self.reported.1,
                "access log lines lost (queue full or write failures); see autolb_access_log_lines_total"
            );
            self.reported = now;
            self.reported_at = Instant::now();
        }
    }
}

/// The thread's body: until the process ends.
pub(super) fn run(runtime: Weak<Runtime>, queue: Arc<AccessQueue>, rx: Receiver<Msg>) {
    let mut w = Writer {
        runtime,
        queue,
        sink: None,
        settings: None,
        reported: (0, 0),
        reported_at: Instant::now(),
        open_failed: None,
    };
    w.follow_config();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(m) => Some(m),
            // Its server is gone (stopped in a process that goes on): so is the queue.
            Err(RecvTimeoutError::Timeout) if w.runtime.strong_count() == 0 => {
                w.flush();
                return;
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                w.flush();
                return;
            }
        };
        if w.queue.reopen.swap(false, Ordering::Relaxed) {
            let target = w.sink.as_ref().map(|s| s.target.clone());
            match target.or_else(|| w.settings.as_ref().map(|s| s.target.clone())) {
                Some(t) => w.reopen(&t),
                None => w.follow_config(),
            }
        }
        if let Some(first) = first {
            w.follow_config();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(entry) => w.write(&entry),
                    Msg::Flush(done) => {
                        w.flush();
                        let _ = done.try_send(());
                    }
                }
                n += 1;
                if n < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            w.flush();
            std::thread::sleep(PAUSE);
        } else if w.sink.is_none() {
            // Turned on by a reload while idle, or a failed open: try again.
            w.follow_config();
        }
        w.report();
    }
}
