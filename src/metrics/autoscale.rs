//! The autoscaler's gauges: desired, min and max instances of each autoscaled pool, and the
//! signals of its last decision (what to plot against `autolb_pool_instances`, and to alert
//! on a pool stuck at its maximum).

use std::fmt::Write;

use super::{header, label};
use crate::autoscale::policy::Signals;
use crate::autoscale::Autoscaler;
use crate::runtime::Snapshot;

/// `(signal label, value)` of the signals that have a value.
pub fn signal_values(s: &Signals) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        ("inflight_per_instance", s.inflight_per_instance),
        ("rps_per_instance", s.rps_per_instance),
        ("cold_waiters", s.cold_waiters as f64),
    ];
    for (name, value) in [
        ("p95_latency_ms", s.p95_latency_ms),
        ("cpu_percent", s.cpu_percent),
        ("memory_mb", s.memory_mb),
    ] {
        if let Some(x) = value.filter(|x| x.is_finite()) {
            v.push((name, x));
        }
    }
    v
}

pub fn render(out: &mut String, snap: &Snapshot, autoscaler: &Autoscaler) {
    // (pool label, desired, min, max, signals), in the config's order.
    let rows: Vec<(String, u32, u32, u32, Signals)> = snap
        .config
        .pools
        .iter()
        .filter(|p| p.autoscale.is_some())
        .filter_map(|p| {
            let scaler = autoscaler.scaler(&p.name)?;
            let st = scaler.lock();
            Some((
                label(&p.name),
                st.desired,
                st.cfg.min,
                st.cfg.max,
                st.last_signals,
            ))
        })
        .collect();
    for (name, help, pick) in [
        (
            "autoscale_desired_instances",
            "Instances the autoscaler wants for the pool now.",
            0,
        ),
        ("autoscale_min_instances", "The pool's autoscale.min.", 1),
        ("autoscale_max_instances", "The pool's autoscale.max.", 2),
    ] {
        header(out, name, "gauge", help);
        for (pool, desired, min, max, _) in &rows {
            let n = [desired, min, max][pick];
            let _ = writeln!(out, "autolb_{name}{{pool=\"{pool}\"}} {n}");
        }
    }
    header(
        out,
        "autoscale_signal",
        "gauge",
        "The signals of the autoscaler's last decision (per ready instance where the name says so).",
    );
    for (pool, _, _, _, signals) in &rows {
        for (signal, value) in signal_values(signals) {
            let _ = writeln!(
                out,
                "autolb_autoscale_signal{{pool=\"{pool}\",signal=\"{signal}\"}} {value}"
            );
        }
    }
}
