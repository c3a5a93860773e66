//! The autoscaler's gauges: desired, min and max instances of each autoscaled pool, and the
//! signals of its last decision (what to plot against `autolb_pool_instances`, and to alert
//! on a pool stuck at its maximum), rendered from what the autoscaler hands over
//! (`AutoscaleCounts`).

use std::fmt::Write;

use super::{header, label};

/// What the autoscaler shows on `/metrics`, built by it (`Autoscaler::counts`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscaleCounts {
    /// `(pool, state, instances)`: starting, ready, draining, stopping.
    pub instances: Vec<(String, &'static str, usize)>,
    /// `(pool, scale-ups, scale-downs)` so far.
    pub events: Vec<(String, u64, u64)>,
    /// The autoscaled pools, in the config's order.
    pub pools: Vec<AutoscaledPool>,
}

/// One autoscaled pool's sizes and the signals of its last decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscaledPool {
    pub name: String,
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// `(signal, value)` of the signals that have a value.
    pub signals: Vec<(&'static str, f64)>,
}

pub fn render(out: &mut String, pools: &[AutoscaledPool]) {
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
        for p in pools {
            let n = [p.desired, p.min, p.max][pick];
            let _ = writeln!(out, "autolb_{name}{{pool=\"{}\"}} {n}", label(&p.name));
        }
    }
    header(
        out,
        "autoscale_signal",
        "gauge",
        "The signals of the autoscaler's last decision (per ready instance where the name says so).",
    );
    for p in pools {
        for (signal, value) in &p.signals {
            let _ = writeln!(
                out,
                "autolb_autoscale_signal{{pool=\"{}\",signal=\"{signal}\"}} {value}",
                label(&p.name)
            );
        }
    }
}
