//! `pools.NAME.autoscale.schedule`, `timezone` and `predictive`: the file types, their
//! checks and the validated runtime types (cron patterns parsed by croner, time zones from
//! chrono-tz's compiled-in IANA database).

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::Dur;
use super::node::Located;

/// `autoscale.schedule[]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a schedule entry (cron, min, max, duration)"
)]
pub struct ScheduleFile {
    pub cron: Option<Located<String>>,
    pub min: Option<Located<u32>>,
    pub max: Option<Located<u32>>,
    pub duration: Option<Located<Dur>>,
}

/// `autoscale.predictive`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a predictive mapping (enabled, lookahead, min_history)"
)]
pub struct PredictiveFile {
    pub enabled: Option<Located<bool>>,
    pub lookahead: Option<Located<Dur>>,
    pub min_history: Option<Located<Dur>>,
}

/// One scheduled change of the bounds: from each time `cron` matches (in the pool's
/// `timezone`), `min` and/or `max` apply, for `duration` or until another entry starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleEntry {
    /// The pattern as written (said in reasons and status).
    pub pattern: String,
    pub cron: croner::Cron,
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// `None`: until another entry starts.
    pub duration: Option<Duration>,
}

/// Predictive pre-scaling: learn the daily and weekly shape of the demand and scale ahead
/// of a recurring rise by `lookahead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predictive {
    /// How far ahead the prediction looks: the instances' start time plus a margin
    /// (default 2m).
    pub lookahead: Duration,
    /// The history needed before the prediction is used (default 1 day; the weekly shape is
    /// used once a week is known).
    pub min_history: Duration,
}

/// The time zone of `timezone` (default UTC).
pub(crate) fn timezone(file: Option<&Located<String>>, issues: &mut Issues) -> chrono_tz::Tz {
    let Some(l) = file else {
        return chrono_tz::Tz::UTC;
    };
    chrono_tz::Tz::from_str(l.value.trim()).unwrap_or_else(|_| {
        issues.push(
            l.pos,
            format!(
                "unknown time zone \"{}\" (an IANA name like Europe/Paris, America/New_York or UTC)",
                l.value
            ),
        );
        chrono_tz::Tz::UTC
    })
}

/// The entries of `schedule`; `ports` is how many instances the port range allows.
pub(crate) fn schedule(
    file: Option<&Located<Vec<Located<ScheduleFile>>>>,
    ports: Option<u32>,
    issues: &mut Issues,
) -> Vec<ScheduleEntry> {
    let Some(list) = file else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for Located { pos, value: e } in &list.value {
        let Some(cron) = &e.cron else {
            issues.push(*pos, "a schedule entry needs cron, e.g. \"0 8 * * 1-5\"");
            continue;
        };
        let parsed = match croner::Cron::from_str(cron.value.trim()) {
            Ok(c) => c,
            Err(err) => {
                issues.push(
                    cron.pos,
                    format!("invalid cron pattern \"{}\": {err}", cron.value),
                );
                continue;
            }
        };
        let (min, max) = (e.min.as_ref(), e.max.as_ref());
        if min.is_none() && max.is_none() {
            issues.push(*pos, "a schedule entry needs min, max or both");
        }
        if let Some(max) = max.filter(|m| m.value == 0) {
            issues.push(max.pos, "a schedule's max must be at least 1");
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo.value > hi.value {
                issues.push(
                    lo.pos,
                    format!(
                        "schedule min {} is greater than its max {}",
                        lo.value, hi.value
                    ),
                );
            }
        }
        for bound in [min, max].into_iter().flatten() {
            if let Some(count) = ports.filter(|&c| bound.value > c) {
                issues.push(
                    bound.pos,
                    format!(
                        "schedule asks for {} instances, the ports allow {count}",
                        bound.value
                    ),
                );
            }
        }
        let duration = e.duration.as_ref().map(|d| d.value.0);
        if let Some(d) = e.duration.as_ref().filter(|d| d.value.0.is_zero()) {
            issues.push(d.pos, "a schedule's duration must be greater than 0");
        }
        entries.push(ScheduleEntry {
            pattern: cron.value.trim().to_string(),
            cron: parsed,
            min: min.map(|m| m.value),
            max: max.map(|m| m.value),
            duration,
        });
    }
    entries
}

/// `predictive`, or `None` when absent or `enabled: false`.
pub(crate) fn predictive(
    file: Option<&Located<PredictiveFile>>,
    issues: &mut Issues,
) -> Option<Predictive> {
    let Located { pos, value: p } = file?;
    let enabled = p.enabled.as_ref().is_none_or(|e| e.value);
    let dur = |f: &Option<Located<Dur>>, default: Duration, what: &str, issues: &mut Issues| match f
    {
        Some(l) if l.value.0.is_zero() => {
            issues.push(l.pos, format!("predictive.{what} must be greater than 0"));
            default
        }
        Some(l) => l.value.0,
        None => default,
    };
    let lookahead = dur(&p.lookahead, Duration::from_secs(120), "lookahead", issues);
    let min_history = dur(
        &p.min_history,
        Duration::from_secs(86_400),
        "min_history",
        issues,
    );
    if lookahead > Duration::from_secs(6 * 3600) {
        let at = p.lookahead.as_ref().map_or(*pos, |l| l.pos);
        issues.push(at, "predictive.lookahead must be at most 6h");
    }
    enabled.then_some(Predictive {
        lookahead,
        min_history,
    })
}
