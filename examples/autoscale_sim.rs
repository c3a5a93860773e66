//! `bench/autoscale-sim`: autolb's scaling policy (the library's own `Policy` and
//! `Predictor`, not a copy) in virtual time over demand traces, with a model of instance
//! start time and per-instance capacity. For each trace and policy configuration it counts
//! the seconds over the in-flight target (SLO violation), instance-seconds (cost), scale
//! events and flaps, and writes the table to `OUT/AUTOSCALE.md` and a chart of one day to
//! `OUT/autoscale-sim.svg`.
//!
//! Usage: `cargo run --example autoscale_sim -- [OUT_DIR]` (default `bench`).

use std::fmt::Write as _;
use std::time::Duration;

use autolb::autoscale::policy::{need, Limits, Policy, Signals, PANIC_RATIO};
use autolb::autoscale::predict::Predictor;
use autolb::config::ScaleTarget;

/// Instance start time: asked for at t, ready at t + START.
const START: u64 = 45;
/// In flight one instance serves within the latency objective.
const CAPACITY: f64 = 60.0;
/// The policy's target (two thirds of the capacity).
const TARGET: u32 = 40;
const MIN: u32 = 2;
const MAX: u32 = 100;
/// A reversal of direction within this many seconds of the previous event is a flap.
const FLAP_WINDOW: u64 = 300;
/// Monday 5 January 2026, 00:00 UTC: the traces' t = 0.
const EPOCH: i64 = 1_767_571_200;
const DAY: u64 = 86_400;

struct Config {
    name: &'static str,
    interval: u64,
    stabilization: u64,
    up_step: fn(u32) -> u32,
    down_step: fn(u32) -> u32,
    panic: bool,
    /// (lookahead, min_history) in seconds.
    predictive: Option<(u64, u64)>,
}

fn configs() -> Vec<Config> {
    vec![
        Config {
            name: "autolb defaults",
            interval: 5,
            stabilization: 300,
            up_step: |_| 4,
            down_step: |_| 1,
            panic: true,
            predictive: None,
        },
        Config {
            // HPA: 15 s sync, 300 s down window, no panic; default scale-up policies (4
            // pods or 100% per 15 s, the larger) and scale-down (100%).
            name: "HPA-like",
            interval: 15,
            stabilization: 300,
            up_step: |cap| cap.max(4),
            down_step: |cap| cap.max(1),
            panic: false,
            predictive: None,
        },
        Config {
            // Knative KPA: 2 s tick, 60 s stable window, panic at 2x (its 6 s panic window
            // is this simulation's per-tick signal), scale-up rate 1000x, down rate 2x.
            name: "Knative-like",
            interval: 2,
            stabilization: 60,
            up_step: |_| 1000,
            down_step: |cap| (cap / 2).max(1),
            panic: true,
            predictive: None,
        },
        Config {
            name: "autolb + prediction",
            interval: 5,
            stabilization: 300,
            up_step: |_| 4,
            down_step: |_| 1,
            panic: true,
            predictive: Some((START + 45, DAY)),
        },
    ]
}

struct Trace {
    name: &'static str,
    what: &'static str,
    /// Demand (requests in flight if served at once) per second.
    demand: Vec<f64>,
    /// Seconds at the start that are learning only (not counted).
    warmup: u64,
}

/// Deterministic noise: a multiplier per minute, 1 ± `amp`.
fn noise(len: usize, amp: f64, seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len.div_ceil(60))
        .map(|_| 1.0 + amp * (rng.f64() * 2.0 - 1.0))
        .collect()
}

fn lerp(a: f64, b: f64, x: f64) -> f64 {
    a + (b - a) * x.clamp(0.0, 1.0)
}

/// A weekday's or weekend day's demand at `s` seconds into the day.
fn diurnal(s: f64, weekend: bool) -> f64 {
    let h = s / 3600.0;
    // Smooth daily curve, with three recurring rushes of one minute (the start of the
    // working day, after lunch, the evening show).
    let base = match h {
        h if h < 6.5 => 100.0,
        h if h < 9.0 => lerp(100.0, 500.0, (h - 6.5) / 2.5),
        h if h < 12.0 => lerp(1400.0, 1200.0, (h - 9.0) / 3.0),
        h if h < 12.5 => lerp(1200.0, 700.0, (h - 12.0) / 0.5),
        h if h < 13.0 => 700.0,
        h if h < 17.0 => lerp(1500.0, 1300.0, (h - 13.0) / 4.0),
        h if h < 19.0 => lerp(1300.0, 400.0, (h - 17.0) / 2.0),
        h if h < 20.0 => 400.0,
        h if h < 21.0 => 1100.0,
        h if h < 23.0 => lerp(1100.0, 100.0, (h - 21.0) / 2.0),
        _ => 100.0,
    };
    // The rushes take one minute, not a step.
    let rush = |at: f64, from: f64| {
        (h >= at && h < at + 1.0 / 60.0).then(|| lerp(from, base, (h - at) * 60.0))
    };
    let base = rush(9.0, 500.0)
        .or_else(|| rush(13.0, 700.0))
        .or_else(|| rush(20.0, 400.0))
        .unwrap_or(base);
    if weekend {
        100.0 + (base - 100.0) * 0.4
    } else {
        base
    }
}

fn traces() -> Vec<Trace> {
    let hour = 3600usize;
    let step: Vec<f64> = (0..hour)
        .map(|t| if t < 600 { 200.0 } else { 1200.0 })
        .collect();
    let ramp: Vec<f64> = (0..hour)
        .map(|t| lerp(200.0, 2000.0, (t as f64 - 600.0) / 1800.0))
        .collect();
    let spike: Vec<f64> = (0..hour)
        .map(|t| {
            if (1200..1320).contains(&t) {
                1500.0
            } else {
                300.0
            }
        })
        .collect();
    let saw: Vec<f64> = (0..hour)
        .map(|t| lerp(300.0, 1200.0, (t % 600) as f64 / 300.0))
        .collect();
    // Two weeks: the first one teaches the prediction, the second one is measured.
    let len = 14 * DAY as usize;
    let n = noise(len, 0.10, 7);
    let week: Vec<f64> = (0..len)
        .map(|t| {
            let day = t / DAY as usize;
            let weekend = matches!(day % 7, 5 | 6);
            diurnal((t % DAY as usize) as f64, weekend) * n[t / 60]
        })
        .collect();
    vec![
        Trace { name: "step", what: "200 -> 1200 in flight at 10 min, 1 h", demand: step, warmup: 0 },
        Trace { name: "ramp", what: "200 -> 2000 over 30 min, 1 h", demand: ramp, warmup: 0 },
        Trace { name: "spike", what: "300, 1500 for 2 min at 20 min, 1 h", demand: spike, warmup: 0 },
        Trace { name: "sawtooth", what: "300 -> 1200 over 5 min, then 300 for 5 min, 1 h", demand: saw, warmup: 0 },
        Trace {
            name: "diurnal week",
            what: "weekdays: 100 in flight at night, rising to 500 by 09:00, then three recurring rushes of one minute (09:00 500 → 1400, 13:00 700 → 1500, 20:00 400 → 1100) and smooth declines; weekends at 40% of that; ±10% noise per minute. Two weeks: the first one only teaches the prediction, the second one is measured.",
            demand: week,
            warmup: 7 * DAY,
        },
    ]
}

#[derive(Default)]
struct Outcome {
    violation_s: u64,
    instance_s: u64,
    events: u32,
    flaps: u32,
    /// Per minute of the measured period: (demand / capacity, ready instances).
    series: Vec<(f64, u32)>,
}

fn run(trace: &Trace, cfg: &Config) -> Outcome {
    let limits = |cap: u32| Limits {
        min: MIN,
        max: MAX,
        target: ScaleTarget {
            inflight_per_instance: Some(TARGET),
            ..ScaleTarget::default()
        },
        up_step: (cfg.up_step)(cap).max(1),
        down_step: (cfg.down_step)(cap).max(1),
        stabilization: Duration::from_secs(cfg.stabilization),
        manual_hold: Duration::ZERO,
        panic_ratio: cfg.panic.then_some(PANIC_RATIO),
        bounds_from: None,
    };
    let t0 = tokio::time::Instant::now();
    let mut policy = Policy::default();
    let mut predictor = Predictor::default();
    // Start steady: the size the first second's demand needs, all ready.
    let first = (trace.demand[0] / f64::from(TARGET)).ceil() as u32;
    let mut ready_at: Vec<u64> = vec![0; first.clamp(MIN, MAX) as usize];
    let mut out = Outcome::default();
    let mut last_event: Option<(u64, bool)> = None;
    for (t, &demand) in trace.demand.iter().enumerate() {
        let t = t as u64;
        let measured = t >= trace.warmup;
        let ready = ready_at.iter().filter(|&&r| r <= t).count() as u32;
        let starting = ready_at.len() as u32 - ready;
        if measured {
            if ready == 0 || demand > CAPACITY * f64::from(ready) {
                out.violation_s += 1;
            }
            out.instance_s += ready_at.len() as u64;
            if t.is_multiple_of(60) {
                out.series.push((demand / CAPACITY, ready));
            }
        }
        if !t.is_multiple_of(cfg.interval) {
            continue;
        }
        let signals = Signals {
            ready,
            starting,
            inflight_per_instance: if ready > 0 {
                demand / f64::from(ready)
            } else {
                0.0
            },
            cold_waiters: if ready == 0 { demand as u64 } else { 0 },
            ..Signals::default()
        };
        let capacity = ready + starting;
        let l = limits(capacity);
        let now = t0 + Duration::from_secs(t);
        let unix = EPOCH + t as i64;
        let forecast = cfg.predictive.and_then(|(lookahead, min_history)| {
            if ready > 0 {
                predictor.observe(unix, need(&l, &signals));
            }
            predictor
                .forecast(
                    unix,
                    Duration::from_secs(lookahead),
                    Duration::from_secs(min_history),
                )
                .ok()
        });
        let d = policy.decide_with(&l, &signals, forecast.as_ref(), now);
        if d.desired == capacity {
            continue;
        }
        let up = d.desired > capacity;
        if up {
            ready_at.extend(std::iter::repeat_n(
                t + START,
                (d.desired - capacity) as usize,
            ));
        } else {
            // Starting ones first (the latest first), then ready ones.
            ready_at.sort_unstable();
            ready_at.truncate(d.desired as usize);
        }
        if measured {
            out.events += 1;
            if let Some((at, dir)) = last_event {
                if dir != up && t - at < FLAP_WINDOW {
                    out.flaps += 1;
                }
            }
        }
        last_event = Some((t, up));
    }
    out
}

fn svg(
    day: &[(f64, u32)],
    reactive: &[(f64, u32)],
    predictive: &[(f64, u32)],
    label: &str,
) -> String {
    let (w, h, pad) = (960.0, 360.0, 40.0);
    let n = day.len().max(2) as f64;
    let top = day
        .iter()
        .map(|d| d.0)
        .chain(reactive.iter().chain(predictive).map(|d| f64::from(d.1)))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / top;
    let line = |pts: Vec<(usize, f64)>, color: &str, width: f64| {
        let mut s = String::new();
        for (i, v) in pts {
            let _ = write!(s, "{:.1},{:.1} ", x(i), y(v));
        }
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{s}\"/>\n")
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for hour in (0..=24).step_by(3) {
        let xi = x(hour * day.len() / 24);
        let _ = writeln!(out, "<line x1=\"{xi:.1}\" y1=\"{pad}\" x2=\"{xi:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{hour:02}:00</text>", h - pad, xi, h - pad + 16.0);
    }
    let mut tick = 0.0;
    while tick <= top {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.0}</text>",
            pad - 4.0,
            y(tick) + 4.0
        );
        tick += 10.0;
    }
    out.push_str(&line(
        day.iter().enumerate().map(|(i, d)| (i, d.0)).collect(),
        "#999",
        2.0,
    ));
    out.push_str(&line(
        reactive
            .iter()
            .enumerate()
            .map(|(i, d)| (i, f64::from(d.1)))
            .collect(),
        "#d62728",
        1.5,
    ));
    out.push_str(&line(
        predictive
            .iter()
            .enumerate()
            .map(|(i, d)| (i, f64::from(d.1)))
            .collect(),
        "#1f77b4",
        1.5,
    ));
    let _ = writeln!(out, "<text x=\"{pad}\" y=\"20\">{label}: instances needed at capacity (grey), ready instances with autolb defaults (red) and with prediction (blue)</text>\n</svg>");
    out
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    let configs = configs();
    let mut md = String::from(
        "# Autoscaling policies in simulation\n\n\
         Written by `bench/autoscale-sim` (`examples/autoscale_sim.rs`): autolb's own policy code \
         (`autoscale::policy::Policy`, `autoscale::predict::Predictor`) driven in virtual time, one \
         step per second, over demand traces. Model: an instance is ready 45 s after it is asked \
         for; one instance serves 60 requests in flight within the latency objective; the \
         target is 40 in flight per instance (`inflight_per_instance: 40`), min 2, max 100; a \
         removed instance stops at once.\n\n\
         - **SLO violation**: seconds when the demand exceeded 60 × ready instances (or nothing was ready).\n\
         - **Instance-seconds**: instances running (starting ones included), summed per second: the cost.\n\
         - **Events**: size changes; **flaps**: a change in the opposite direction within 300 s of the previous one.\n\n\
         Configurations, all through the same `Policy` with different limits:\n\n\
         | configuration | interval | scale-up per decision | scale-down window, step | panic |\n\
         | --- | --- | --- | --- | --- |\n\
         | autolb defaults | 5 s | 4 | 300 s, 1 | at 2x: no scale-down for 300 s |\n\
         | HPA-like | 15 s | max(4, 100%) | 300 s, 100% | none |\n\
         | Knative-like | 2 s | 1000 | 60 s, 50% | at 2x: no scale-down for 60 s |\n\
         | autolb + prediction | 5 s | 4 | 300 s, 1 | at 2x; `predictive: { lookahead: 90s, min_history: 1d }` |\n\n\
         The prediction needs a day of history: on the one-hour traces it has none and decides \
         exactly like the defaults. What it buys shows on the diurnal week.\n\n",
    );
    let mut week = None;
    for trace in traces() {
        let _ = writeln!(md, "## {}\n\n{}\n", trace.name, trace.what);
        md.push_str("| configuration | SLO violation (s) | instance-seconds | events | flaps |\n| --- | ---: | ---: | ---: | ---: |\n");
        let outcomes: Vec<Outcome> = configs.iter().map(|c| run(&trace, c)).collect();
        for (c, o) in configs.iter().zip(&outcomes) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                c.name, o.violation_s, o.instance_s, o.events, o.flaps
            );
        }
        md.push('\n');
        if trace.warmup > 0 {
            let (r, p) = (&outcomes[0], &outcomes[3]);
            let cut = 100.0 * (1.0 - p.violation_s as f64 / (r.violation_s.max(1)) as f64);
            let more = 100.0 * (p.instance_s as f64 / r.instance_s.max(1) as f64 - 1.0);
            let _ = writeln!(
                md,
                "Prediction against autolb's reactive defaults: **{cut:.0}% fewer SLO-violation seconds** ({} → {}) for **{more:+.1}% instance-seconds**.\n",
                r.violation_s, p.violation_s
            );
            week = Some(outcomes);
        }
    }
    if let Some(o) = week {
        // Tuesday of the measured week (minutes 1440..2880 of its series).
        let day = |s: &[(f64, u32)]| s[1440..2880].to_vec();
        let chart = svg(
            &day(&o[0].series),
            &day(&o[0].series),
            &day(&o[3].series),
            "Tuesday of the measured week",
        );
        let path = format!("{dir}/autoscale-sim.svg");
        std::fs::write(&path, chart).unwrap_or_else(|e| panic!("{path}: {e}"));
        md.push_str("![Tuesday of the measured diurnal week](autoscale-sim.svg)\n");
    }
    let path = format!("{dir}/AUTOSCALE.md");
    std::fs::write(&path, md).unwrap_or_else(|e| panic!("{path}: {e}"));
    println!("wrote {path}");
}
