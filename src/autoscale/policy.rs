//! The scaling policy as pure code: the Kubernetes HPA rule over every configured target
//! (largest wins, 10% tolerance), immediate scale-up bounded by `scale_up.max_step` (panic
//! included), scale-down after a stabilization window, Knative-style panic, a prediction
//! that may only raise the size, manual holds and the `[min, max]` bounds; every decision
//! says which rule decided it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Autoscale, ScaleTarget};

/// Within this ratio of the target, nothing changes (HPA's default tolerance).
pub const TOLERANCE: f64 = 0.10;
/// At this multiple of a target, the pool is in panic: no scale-down during the
/// stabilization window after it.
pub const PANIC_RATIO: f64 = 2.0;

/// What the pool looks like now. Per-instance values are averages over ready instances.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub ready: u32,
    pub starting: u32,
    pub inflight_per_instance: f64,
    pub rps_per_instance: f64,
    /// Of the pool, over the last interval; `None` without traffic.
    pub p95_latency_ms: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    /// Requests waiting for a first instance.
    pub cold_waiters: u64,
    /// `target.prometheus`: the query's value (for the pool, not per instance); `None`
    /// when unconfigured or unavailable.
    pub prometheus: Option<f64>,
    /// `target.redis_list`: the list's length.
    pub redis_list: Option<f64>,
}

impl Signals {
    /// `(signal label, value)` of the signals that have a value (`autolb_autoscale_signal`).
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("inflight_per_instance", self.inflight_per_instance),
            ("rps_per_instance", self.rps_per_instance),
            ("cold_waiters", self.cold_waiters as f64),
        ];
        for (name, value) in [
            ("p95_latency_ms", self.p95_latency_ms),
            ("cpu_percent", self.cpu_percent),
            ("memory_mb", self.memory_mb),
        ] {
            if let Some(x) = value.filter(|x| x.is_finite()) {
                v.push((name, x));
            }
        }
        v
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub reason: String,
    pub panic: bool,
}

/// Scaling limits and targets of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub min: u32,
    pub max: u32,
    pub target: ScaleTarget,
    pub up_step: u32,
    pub down_step: u32,
    pub stabilization: Duration,
    pub manual_hold: Duration,
    /// Panic at this multiple of a target; `None`: never (HPA-like).
    pub panic_ratio: Option<f64>,
    /// Where `min` and `max` come from when not from the pool's own keys (a schedule),
    /// said in the reason when a bound decides.
    pub bounds_from: Option<String>,
}

impl From<&Autoscale> for Limits {
    fn from(a: &Autoscale) -> Limits {
        Limits {
            min: a.min,
            max: a.max,
            target: a.target,
            up_step: a.scale_up_max_step.max(1),
            down_step: a.scale_down_max_step.max(1),
            stabilization: a.scale_down_stabilization,
            manual_hold: a.manual_hold,
            panic_ratio: Some(PANIC_RATIO),
            bounds_from: None,
        }
    }
}

/// What the prediction wants now (`predict.rs`): the size the demand expected within the
/// lookahead needs, and how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub desired: u32,
    pub why: String,
}

/// The policy's memory: recent recommendations (for stabilization), a manual hold, and the
/// last panic.
#[derive(Debug, Default)]
pub struct Policy {
    recommendations: VecDeque<(Instant, u32)>,
    manual: Option<(u32, Instant)>,
    last_panic: Option<Instant>,
    observing: bool,
}

/// The strongest target's recommendation.
struct Recommendation {
    desired: u32,
    why: String,
    panic: bool,
}

/// Each configured target with its observed value per ready instance (`None` without
/// data).
fn candidates(limits: &Limits, s: &Signals) -> [(&'static str, Option<f64>, Option<f64>); 7] {
    let t = &limits.target;
    let f = |v: Option<u32>| v.map(f64::from);
    let per_ready = |v: Option<f64>| v.map(|v| v / f64::from(s.ready.max(1)));
    [
        (
            "inflight_per_instance",
            Some(s.inflight_per_instance),
            f(t.inflight_per_instance),
        ),
        (
            "rps_per_instance",
            Some(s.rps_per_instance),
            f(t.rps_per_instance),
        ),
        (
            "p95_latency_ms",
            s.p95_latency_ms.or(Some(0.0)),
            f(t.p95_latency_ms),
        ),
        ("cpu_percent", s.cpu_percent, f(t.cpu_percent)),
        ("memory_mb", s.memory_mb, f(t.memory_mb)),
        ("prometheus", per_ready(s.prometheus), t.prometheus),
        ("redis_list", per_ready(s.redis_list), t.redis_list),
    ]
}

/// External sources that are configured but have no value now (unreachable, failing).
fn missing(limits: &Limits, s: &Signals) -> Vec<&'static str> {
    let t = &limits.target;
    [
        (
            "prometheus",
            t.prometheus.is_some() && s.prometheus.is_none(),
        ),
        (
            "redis_list",
            t.redis_list.is_some() && s.redis_list.is_none(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, gone)| gone.then_some(name))
    .collect()
}

/// Work an external source reports while no instance runs (a queue with items).
fn external_demand(s: &Signals) -> Option<(&'static str, f64)> {
    [("prometheus", s.prometheus), ("redis_list", s.redis_list)]
        .into_iter()
        .find_map(|(name, v)| v.filter(|v| *v > 0.0).map(|v| (name, v)))
}

/// The instances the demand needs, fractional and without tolerance: the largest
/// `ready × observed / target` (what the prediction learns).
pub fn need(limits: &Limits, s: &Signals) -> f64 {
    candidates(limits, s)
        .into_iter()
        .filter_map(|(_, observed, target)| {
            Some(f64::from(s.ready) * observed? / target?.max(f64::MIN_POSITIVE))
        })
        .fold(0.0, f64::max)
}

fn recommend(limits: &Limits, s: &Signals) -> Recommendation {
    // HPA: desired = ceil(ready * observed / target) per target; the largest wins.
    let mut best: Option<(u32, String)> = None;
    let mut panic: Option<(f64, &str)> = None;
    for (name, observed, target) in candidates(limits, s) {
        let (Some(observed), Some(target)) = (observed, target) else {
            continue;
        };
        let ratio = observed / target.max(f64::MIN_POSITIVE);
        if limits.panic_ratio.is_some_and(|p| ratio >= p) && panic.is_none_or(|(r, _)| ratio > r) {
            panic = Some((ratio, name));
        }
        let (rec, how) = if (ratio - 1.0).abs() <= TOLERANCE {
            (s.ready, "within 10% of the target, keeps")
        } else {
            ((f64::from(s.ready) * ratio - 1e-9).ceil() as u32, "wants")
        };
        if best.as_ref().is_none_or(|(b, _)| rec > *b) {
            let why = format!("{name} {observed:.1}/{target} ({ratio:.2}x) {how} {rec}");
            best = Some((rec, why));
        }
    }
    let (mut desired, mut why) = best.unwrap_or((s.ready, "no target has data, keeps".into()));
    let gone = missing(limits, s);
    if !gone.is_empty() && desired <= s.ready {
        // Never scale in on missing data: the source may say the opposite once it is back.
        desired = s.ready;
        why = format!(
            "{} has no data: holds {}; {why}",
            gone.join(" and "),
            s.ready
        );
    }
    if let Some((ratio, name)) = panic {
        let at = limits.panic_ratio.unwrap_or(PANIC_RATIO);
        why.push_str(&format!(", panic ({name} {ratio:.2}x >= {at}x)"));
    }
    Recommendation {
        desired,
        why,
        panic: panic.is_some(),
    }
}

impl Policy {
    /// Hold `instances` (already clamped) until `now + hold`.
    pub fn set_manual(&mut self, instances: u32, now: Instant, hold: Duration) {
        self.manual = Some((instances, now + hold));
        // A manual change restarts stabilization from the new size.
        self.recommendations.clear();
        self.observing = false;
    }

    pub fn manual_until(&self, now: Instant) -> Option<Instant> {
        self.manual
            .filter(|(_, until)| *until > now)
            .map(|(_, u)| u)
    }

    /// Decide the desired number of instances from the signals alone.
    pub fn decide(&mut self, limits: &Limits, s: &Signals, now: Instant) -> Decision {
        self.decide_with(limits, s, None, now)
    }

    /// Decide the desired number of instances; a forecast raises the recommendation when it
    /// is higher (the reactive rule wins when the prediction is lower) and is always said.
    pub fn decide_with(
        &mut self,
        limits: &Limits,
        s: &Signals,
        forecast: Option<&Forecast>,
        now: Instant,
    ) -> Decision {
        let capacity = s.ready + s.starting;
        let (min, max) = (limits.min, limits.max.max(limits.min));
        let mut notes: Vec<String> = Vec::new();
        let mut panic = false;
        let mut hold_rule = false;
        let manual = self.manual.filter(|(_, until)| now < *until);
        if manual.is_none() {
            self.manual = None;
        }
        let (wanted, why) = if let Some((n, until)) = manual {
            (
                n,
                format!("manual hold of {n} ({}s left)", (until - now).as_secs()),
            )
        } else if s.ready == 0 {
            let demand = s.cold_waiters > 0 || s.inflight_per_instance > 0.0;
            if capacity > 0 {
                (
                    capacity,
                    format!("no instance ready yet, {capacity} starting"),
                )
            } else if let (false, Some((name, v))) = (demand, external_demand(s)) {
                (1, format!("scale from zero: {name} is {v}"))
            } else if demand {
                (
                    1,
                    format!("scale from zero: {} requests waiting", s.cold_waiters),
                )
            } else if min > 0 {
                hold_rule = true;
                (min, format!("start at min {min}{}", from(limits)))
            } else {
                (0, "no instance and no demand".to_string())
            }
        } else {
            let rec = recommend(limits, s);
            panic = rec.panic;
            if panic {
                self.last_panic = Some(now);
            }
            let (mut raw, mut why) = (rec.desired, rec.why);
            if let Some(f) = forecast {
                if f.desired > raw {
                    why = format!(
                        "prediction wants {} ({}); reactive: {why}",
                        f.desired, f.why
                    );
                    raw = f.desired;
                } else {
                    why.push_str(&format!(
                        "; prediction wants {} ({}), lower",
                        f.desired, f.why
                    ));
                }
            }
            let desired = self.stabilize(limits, capacity, raw, now, &mut notes);
            (desired, why)
        };
        let bounded = wanted.clamp(min, max);
        if bounded != wanted && !hold_rule {
            notes.push(if bounded > wanted {
                format!("not below min {min}{}", from(limits))
            } else {
                format!("not above max {max}{}", from(limits))
            });
        }
        let action = if bounded > capacity {
            format!("scale up to {bounded}")
        } else if bounded < capacity {
            format!("scale down to {bounded}")
        } else if notes.is_empty() {
            format!("steady at {bounded}")
        } else {
            format!("hold at {bounded}")
        };
        let mut reason = format!("{action}: {why}");
        for n in notes {
            reason.push_str("; ");
            reason.push_str(&n);
        }
        Decision {
            desired: bounded,
            reason,
            panic,
        }
    }

    /// From the recommendation `raw` to the size, by the scale-up step, the stabilization
    /// window, the panic window and the scale-down step; each that decides adds its note.
    fn stabilize(
        &mut self,
        limits: &Limits,
        capacity: u32,
        raw: u32,
        now: Instant,
        notes: &mut Vec<String>,
    ) -> u32 {
        if !self.observing {
            // The size found at start counts as a recommendation: no scale-down before a
            // whole window has been seen.
            self.observing = true;
            self.recommendations.push_back((now, capacity));
        }
        self.recommendations.push_back((now, raw));
        while let Some(&(at, _)) = self.recommendations.front() {
            if now.saturating_duration_since(at) > limits.stabilization {
                self.recommendations.pop_front();
            } else {
                break;
            }
        }
        if raw > capacity {
            // Scale up at once, by at most `up_step` (in panic too); starting instances
            // already count as capacity.
            let limit = capacity.saturating_add(limits.up_step);
            if raw > limit && limit < limits.max.max(limits.min) {
                notes.push(format!(
                    "limited to +{} by scale_up.max_step",
                    limits.up_step
                ));
                return limit;
            }
            return raw;
        }
        if raw == capacity {
            return capacity;
        }
        let window = limits.stabilization.as_secs();
        if let Some(p) = self.last_panic {
            let since = now.saturating_duration_since(p);
            if since < limits.stabilization {
                notes.push(format!(
                    "no scale-down within {window}s of a panic ({}s left)",
                    (limits.stabilization - since).as_secs()
                ));
                return capacity;
            }
        }
        // The highest recommendation of the window wins: no flapping.
        let stable = self
            .recommendations
            .iter()
            .map(|&(_, r)| r)
            .max()
            .unwrap_or(raw);
        if stable >= capacity {
            notes.push(format!(
                "highest recommendation of the last {window}s (scale_down.stabilization) is {stable}"
            ));
            return capacity;
        }
        let stepped = capacity.saturating_sub(limits.down_step);
        // Bounds decide before the step or the window when they are what stops the descent.
        let floor = limits.min;
        if stable > raw && stable >= stepped && stable > floor {
            notes.push(format!(
                "highest recommendation of the last {window}s (scale_down.stabilization) is {stable}"
            ));
            return stable;
        }
        if stepped > raw && stepped > floor {
            notes.push(format!(
                "limited to -{} by scale_down.max_step",
                limits.down_step
            ));
            return stepped;
        }
        raw
    }
}

/// ` (schedule "...")` when a schedule set the bounds.
fn from(limits: &Limits) -> String {
    limits
        .bounds_from
        .as_ref()
        .map(|b| format!(" ({b})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
