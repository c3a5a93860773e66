//! Prometheus text exposition of autolb's metrics (prefix `autolb_`), rendered on demand
//! from the live snapshot's atomics: nothing is registered or locked on the hot path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::autoscale::Autoscaler;
use crate::runtime::stats::HISTOGRAM_BOUNDS;
use crate::runtime::Runtime;
use crate::server::ListenerStats;

/// Status-class labels, in the order of `BackendStats::responses`.
pub const CODE_LABELS: [&str; 6] = ["failed", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Escape a label value (backslash, quote, newline).
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP autolb_{name} {help}");
    let _ = writeln!(out, "# TYPE autolb_{name} {kind}");
}

/// Render every metric in the Prometheus text format (version 0.0.4).
pub fn render(
    runtime: &Runtime,
    listeners: &BTreeMap<String, Arc<ListenerStats>>,
    autoscaler: Option<&Autoscaler>,
) -> String {
    let snap = runtime.snapshot();
    let mut out = String::with_capacity(4096);

    header(
        &mut out,
        "requests_total",
        "counter",
        "Responses by pool, backend and status class (failed: no response).",
    );
    for pool in &snap.pools {
        for b in &pool.backends {
            for (i, code) in CODE_LABELS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "autolb_requests_total{{pool=\"{}\",backend=\"{}\",code=\"{}\"}} {}",
                    label(&pool.name),
                    label(&b.address),
                    code,
                    b.stats.responses[i].load(Ordering::Relaxed)
                );
            }
        }
    }

    header(
        &mut out,
        "request_duration_seconds",
        "histogram",
        "Time from request to the end of the response, per pool.",
    );
    for pool in &snap.pools {
        let h = &pool.stats.histogram;
        let p = label(&pool.name);
        let mut cumulative = 0;
        for (i, bound) in HISTOGRAM_BOUNDS.iter().enumerate() {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "autolb_request_duration_seconds_bucket{{pool=\"{p}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += h.counts[HISTOGRAM_BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "autolb_request_duration_seconds_bucket{{pool=\"{p}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "autolb_request_duration_seconds_sum{{pool=\"{p}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "autolb_request_duration_seconds_count{{pool=\"{p}\"}} {cumulative}"
        );
    }

    header(
        &mut out,
        "backend_up",
        "gauge",
        "1 when the backend may receive requests.",
    );
    for pool in &snap.pools {
        for b in &pool.backends {
            let _ = writeln!(
                out,
                "autolb_backend_up{{pool=\"{}\",backend=\"{}\"}} {}",
                label(&pool.name),
                label(&b.address),
                u8::from(b.usable())
            );
        }
    }

    header(
        &mut out,
        "backend_active_requests",
        "gauge",
        "Requests in flight to the backend.",
    );
    for pool in &snap.pools {
        for b in &pool.backends {
            let _ = writeln!(
                out,
                "autolb_backend_active_requests{{pool=\"{}\",backend=\"{}\"}} {}",
                label(&pool.name),
                label(&b.address),
                b.active()
            );
        }
    }

    header(
        &mut out,
        "websocket_connections",
        "gauge",
        "Open WebSocket (upgraded) connections through the backend.",
    );
    for pool in &snap.pools {
        for b in &pool.backends {
            let _ = writeln!(
                out,
                "autolb_websocket_connections{{pool=\"{}\",backend=\"{}\"}} {}",
                label(&pool.name),
                label(&b.address),
                b.stats.websockets.load(Ordering::Relaxed)
            );
        }
    }

    header(
        &mut out,
        "pool_instances",
        "gauge",
        "Instances of a pool by state (static pools: ready, unavailable).",
    );
    let (scaled, scaling_events) = autoscaler.map(|a| a.metrics()).unwrap_or_default();
    for pool in &snap.pools {
        if scaled.iter().any(|(p, _, _)| *p == pool.name) {
            continue;
        }
        let ready = pool.ready_backends();
        let total = pool.backends.len();
        for (state, n) in [("ready", ready), ("unavailable", total - ready)] {
            let _ = writeln!(
                out,
                "autolb_pool_instances{{pool=\"{}\",state=\"{state}\"}} {n}",
                label(&pool.name)
            );
        }
    }
    for (pool, state, n) in &scaled {
        let _ = writeln!(
            out,
            "autolb_pool_instances{{pool=\"{}\",state=\"{state}\"}} {n}",
            label(pool)
        );
    }

    header(
        &mut out,
        "scaling_events_total",
        "counter",
        "Autoscaler decisions that changed a pool's size.",
    );
    for (pool, ups, downs) in &scaling_events {
        for (direction, n) in [("up", ups), ("down", downs)] {
            let _ = writeln!(
                out,
                "autolb_scaling_events_total{{pool=\"{}\",direction=\"{direction}\"}} {n}",
                label(pool)
            );
        }
    }

    header(
        &mut out,
        "config_reloads_total",
        "counter",
        "Configuration reload attempts by result.",
    );
    let _ = writeln!(
        out,
        "autolb_config_reloads_total{{result=\"success\"}} {}",
        runtime.reloads_ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "autolb_config_reloads_total{{result=\"failure\"}} {}",
        runtime.reloads_failed.load(Ordering::Relaxed)
    );

    header(
        &mut out,
        "downstream_connections",
        "gauge",
        "Open client connections per listener.",
    );
    for (name, st) in listeners {
        let _ = writeln!(
            out,
            "autolb_downstream_connections{{listener=\"{}\"}} {}",
            label(name),
            st.connections.load(Ordering::Relaxed)
        );
    }
    crate::proxy::normalize::render_metrics(&mut out, &snap);
    crate::tls::render_metrics(&mut out);
    crate::l4::render_metrics(&mut out, &snap);
    crate::runtime::limit::render_metrics(&mut out, &snap);
    crate::accesslog::render_metrics(&mut out);
    out
}
