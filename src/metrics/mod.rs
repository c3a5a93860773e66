//! Prometheus text exposition of autolb's metrics (prefix `autolb_`, and the standard
//! `process_*`), rendered on demand from the live snapshot's atomics and from what the
//! caller hands over (`Given`: the listeners' counts, the autoscaler's): nothing is
//! registered or locked on the hot path, and no server or autoscaler type is known here.

use std::fmt::Write;
use std::sync::atomic::Ordering;

mod autoscale;
pub mod cache;
pub mod pools;
pub mod process;

pub(crate) use crate::prom::{header, label};

pub use autoscale::{AutoscaleCounts, AutoscaledPool};

use crate::runtime::Runtime;

/// What `/metrics` shows beside the runtime's snapshot, handed over by its caller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    /// The listeners serving now.
    pub listeners: Vec<ListenerCounts>,
    /// The autoscaler's counts, when it runs.
    pub autoscale: Option<AutoscaleCounts>,
}

/// One listener's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerCounts {
    pub name: String,
    /// Open client connections (`autolb_downstream_connections`).
    pub connections: i64,
    /// QUIC handshakes by result, once the listener served HTTP/3.
    pub quic: Option<Vec<(&'static str, u64)>>,
}

/// The git commit autolb was built from (`AUTOLB_BUILD_GIT`, set by the build script), or
/// `unknown`.
pub const GIT_COMMIT: &str = match option_env!("AUTOLB_BUILD_GIT") {
    Some(c) => c,
    None => "unknown",
};

/// Status-class labels, in the order of `BackendStats::responses`.
pub const CODE_LABELS: [&str; 6] = ["failed", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Render every metric in the Prometheus text format (version 0.0.4).
pub fn render(runtime: &Runtime, given: &Given) -> String {
    let snap = runtime.snapshot();
    let mut out = String::with_capacity(16 * 1024);

    header(
        &mut out,
        "build_info",
        "gauge",
        "Always 1: the version and git commit of this autolb.",
    );
    let _ = writeln!(
        out,
        "autolb_build_info{{version=\"{}\",git=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(GIT_COMMIT)
    );
    pools::render(&mut out, &snap);
    cache::render(&mut out, &snap);

    header(
        &mut out,
        "pool_instances",
        "gauge",
        "Instances of a pool by state (static pools: ready, unavailable).",
    );
    let no_scaler = AutoscaleCounts::default();
    let scaler = given.autoscale.as_ref().unwrap_or(&no_scaler);
    let (scaled, scaling_events) = (&scaler.instances, &scaler.events);
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
    for (pool, state, n) in scaled {
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
    for (pool, ups, downs) in scaling_events {
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
    for l in &given.listeners {
        let _ = writeln!(
            out,
            "autolb_downstream_connections{{listener=\"{}\"}} {}",
            label(&l.name),
            l.connections
        );
    }
    if given.listeners.iter().any(|l| l.quic.is_some()) {
        header(
            &mut out,
            "quic_handshakes_total",
            "counter",
            "QUIC connection attempts on http3 listeners by QUIC version and result (completed, failed, retry, refused).",
        );
        for l in &given.listeners {
            for (result, n) in l.quic.iter().flatten() {
                let _ = writeln!(
                    out,
                    "autolb_quic_handshakes_total{{listener=\"{}\",version=\"1\",result=\"{result}\"}} {n}",
                    label(&l.name),
                );
            }
        }
    }
    crate::proxy::normalize::render_metrics(&mut out, &snap);
    crate::l4::render_metrics(&mut out, &snap);
    crate::runtime::limit::render_metrics(&mut out, &snap);
    crate::accesslog::render_metrics(&mut out, &snap.access_log);
    if let Some(a) = &given.autoscale {
        autoscale::render(&mut out, &a.pools);
    }
    process::render(&mut out);
    out
}
