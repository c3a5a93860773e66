//! The per-pool and per-backend families: requests, durations, time to first byte, health,
//! in-flight requests, retries, ejections, health checks and bytes. Every value is an
//! atomic of the live snapshot's pools and backends, read without a lock.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{header, label, CODE_LABELS};
use crate::backend::histogram::{DurationHistogram, HISTOGRAM_BOUNDS};
use crate::runtime::{Snapshot, RETRY_REASONS};

/// Labels of `autolb_health_checks_total{result}`, in the order of `BackendStats::checks`.
pub const CHECK_RESULTS: [&str; 2] = ["success", "failure"];

/// One histogram's `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",...` (no braces).
fn histogram(out: &mut String, name: &str, labels: &str, h: &DurationHistogram) {
    let mut cumulative = 0;
    for (i, bound) in HISTOGRAM_BOUNDS.iter().enumerate() {
        cumulative += h.counts[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "autolb_{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += h.counts[HISTOGRAM_BOUNDS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "autolb_{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
    );
    let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "autolb_{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "autolb_{name}_count{{{labels}}} {cumulative}");
}

/// `pool="..",backend=".."` of every backend of every pool.
fn backends(snap: &Snapshot) -> impl Iterator<Item = (String, &crate::runtime::Backend)> {
    snap.pools.iter().flat_map(|p| {
        let pool = label(&p.name);
        p.backends.iter().map(move |b| {
            (
                format!("pool=\"{pool}\",backend=\"{}\"", label(&b.address)),
                b.as_ref(),
            )
        })
    })
}

pub fn render(out: &mut String, snap: &Snapshot) {
    header(
        out,
        "requests_total",
        "counter",
        "Responses by pool, backend and status class (failed: no response).",
    );
    for (l, b) in backends(snap) {
        for (i, code) in CODE_LABELS.iter().enumerate() {
            let n = b.stats.responses[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "autolb_requests_total{{{l},code=\"{code}\"}} {n}");
        }
    }

    header(
        out,
        "request_duration_seconds",
        "histogram",
        "Time from request to the end of the response, per pool.",
    );
    for pool in &snap.pools {
        let l = format!("pool=\"{}\"", label(&pool.name));
        histogram(out, "request_duration_seconds", &l, &pool.stats.histogram);
    }

    header(
        out,
        "backend_response_seconds",
        "histogram",
        "Time to first byte: from the start of an attempt (connect included) to the backend's response head.",
    );
    for (l, b) in backends(snap) {
        histogram(out, "backend_response_seconds", &l, &b.stats.ttfb);
    }

    header(
        out,
        "backend_up",
        "gauge",
        "1 when the backend may receive requests.",
    );
    for (l, b) in backends(snap) {
        let _ = writeln!(out, "autolb_backend_up{{{l}}} {}", u8::from(b.usable()));
    }

    header(
        out,
        "backend_active_requests",
        "gauge",
        "Requests in flight to the backend.",
    );
    for (l, b) in backends(snap) {
        let _ = writeln!(out, "autolb_backend_active_requests{{{l}}} {}", b.active());
    }

    header(
        out,
        "websocket_connections",
        "gauge",
        "Open WebSocket (upgraded) connections through the backend.",
    );
    for (l, b) in backends(snap) {
        let n = b.stats.websockets.load(Ordering::Relaxed);
        let _ = writeln!(out, "autolb_websocket_connections{{{l}}} {n}");
    }

    header(
        out,
        "outlier_ejections_total",
        "counter",
        "Times passive outlier detection ejected the backend.",
    );
    for (l, b) in backends(snap) {
        let n = b.stats.ejections_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "autolb_outlier_ejections_total{{{l}}} {n}");
    }

    header(
        out,
        "health_checks_total",
        "counter",
        "Active health checks of the backend by result.",
    );
    for (l, b) in backends(snap) {
        for (i, result) in CHECK_RESULTS.iter().enumerate() {
            let n = b.stats.checks[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "autolb_health_checks_total{{{l},result=\"{result}\"}} {n}"
            );
        }
    }

    header(
        out,
        "retries_total",
        "counter",
        "Attempts made again on another backend, by why the previous one failed.",
    );
    for pool in &snap.pools {
        let p = label(&pool.name);
        for (i, reason) in RETRY_REASONS.iter().enumerate() {
            let n = pool.stats.retries[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "autolb_retries_total{{pool=\"{p}\",reason=\"{reason}\"}} {n}"
            );
        }
    }

    header(
        out,
        "grpc_requests_total",
        "counter",
        "gRPC calls by pool and the grpc-status they ended with (autolb's own answers included; a status appears once it occurred).",
    );
    for pool in &snap.pools {
        let p = label(&pool.name);
        for (code, n) in pool.stats.grpc_statuses.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "autolb_grpc_requests_total{{pool=\"{p}\",grpc_status=\"{code}\"}} {n}"
                );
            }
        }
    }

    for (name, help, pick) in [
        (
            "request_bytes_total",
            "Request body bytes received from clients, per pool.",
            0,
        ),
        (
            "response_bytes_total",
            "Response body bytes forwarded to clients from the pool's backends.",
            1,
        ),
    ] {
        header(out, name, "counter", help);
        for pool in &snap.pools {
            let s = &pool.stats;
            let n = if pick == 0 {
                &s.request_bytes
            } else {
                &s.response_bytes
            };
            let _ = writeln!(
                out,
                "autolb_{name}{{pool=\"{}\"}} {}",
                label(&pool.name),
                n.load(Ordering::Relaxed)
            );
        }
    }
}
