//! The scaling policy as pure code: the Kubernetes HPA rule over every configured target
//! (largest wins, 10% tolerance), immediate bounded scale-up, scale-down after a
//! stabilization window, Knative-style panic, manual holds, and clamping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Autoscale, ScaleTarget};

/// Within this ratio of the target, nothing changes (HPA's default tolerance).
pub const TOLERANCE: f64 = 0.10;
/// At this multiple of a target, the pool is in panic: scale up without step limits and
/// never scale down during the stabilization window.
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
        }
    }
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

    /// Decide the desired number of instances.
    pub fn decide(&mut self, limits: &Limits, s: &Signals, now: Instant) -> Decision {
        let capacity = s.ready + s.starting;
        if let Some((n, until)) = self.manual {
            if now < until {
                return Decision {
                    desired: n,
                    reason: format!("manual hold ({}s left)", (until - now).as_secs()),
                    panic: false,
                };
            }
            self.manual = None;
        }
        let clamp = |n: u32| n.clamp(limits.min, limits.max.max(limits.min));
        if s.ready == 0 {
            let demand = s.cold_waiters > 0 || s.inflight_per_instance > 0.0;
            let (desired, reason) = if capacity > 0 {
                (capacity, "waiting for starting instances".to_string())
            } else if demand {
                (
                    1,
                    format!("scale from zero: {} requests waiting", s.cold_waiters),
                )
            } else {
                (0, "no instances and no demand".to_string())
            };
            return Decision {
                desired: clamp(desired),
                reason,
                panic: false,
            };
        }

        // HPA: desired = ceil(ready * observed / target) per target; the largest wins.
        let t = &limits.target;
        let candidates = [
            (
                "inflight_per_instance",
                Some(s.inflight_per_instance),
                t.inflight_per_instance,
            ),
            (
                "rps_per_instance",
                Some(s.rps_per_instance),
                t.rps_per_instance,
            ),
            (
                "p95_latency_ms",
                s.p95_latency_ms.or(Some(0.0)),
                t.p95_latency_ms,
            ),
            ("cpu_percent", s.cpu_percent, t.cpu_percent),
            ("memory_mb", s.memory_mb, t.memory_mb),
        ];
        let mut best: Option<(u32, String)> = None;
        let mut panic = false;
        for (name, observed, target) in candidates {
            let (Some(observed), Some(target)) = (observed, target) else {
                continue;
            };
            let ratio = observed / f64::from(target.max(1));
            panic |= ratio >= PANIC_RATIO;
            let rec = if (ratio - 1.0).abs() <= TOLERANCE {
                s.ready
            } else {
                (f64::from(s.ready) * ratio).ceil() as u32
            };
            if best.as_ref().is_none_or(|(b, _)| rec > *b) {
                let why = format!("{name} {observed:.1}/{target} ({ratio:.2}x) -> {rec}");
                best = Some((rec, why));
            }
        }
        let (raw, why) = best.unwrap_or((s.ready, "no target has data".to_string()));
        if panic {
            self.last_panic = Some(now);
        }
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

        let (desired, reason) = if raw > capacity {
            // Scale up at once; starting instances already count as capacity.
            let step = if panic {
                raw
            } else {
                raw.min(capacity + limits.up_step)
            };
            (
                step,
                format!("scale up: {why}{}", if panic { " (panic)" } else { "" }),
            )
        } else if raw < capacity {
            let in_panic_window = self
                .last_panic
                .is_some_and(|p| now.saturating_duration_since(p) < limits.stabilization);
            // The highest recommendation of the window wins: no flapping.
            let stable = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(raw);
            if in_panic_window || stable >= capacity {
                (capacity, format!("hold: {why}, stabilizing at {capacity}"))
            } else {
                let down = stable.max(capacity.saturating_sub(limits.down_step));
                (down, format!("scale down: {why}, stabilized {stable}"))
            }
        } else {
            (capacity, format!("steady: {why}"))
        };
        let clamped = clamp(desired);
        let reason = if clamped != desired {
            format!("{reason}, clamped to [{}, {}]", limits.min, limits.max)
        } else {
            reason
        };
        Decision {
            desired: clamped,
            reason,
            panic,
        }
    }
}

#[cfg(test)]
mod tests;
