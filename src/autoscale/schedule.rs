//! Scheduled bounds (`autoscale.schedule`, AWS-style scheduled scaling): which entry is in
//! force at a wall-clock time, in the pool's time zone, and the policy limits it gives.
//!
//! An entry starts each time its cron pattern matches and lasts `duration`, or, without
//! one, until another entry starts. Of the entries whose window is open, the one that
//! started last is in force; with none, the pool's own `min` and `max` apply.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::policy::Limits;
use crate::config::{Autoscale, ScheduleEntry};

/// The entry in force at `at` and when its window began.
pub fn active(cfg: &Autoscale, at: DateTime<Utc>) -> Option<(&ScheduleEntry, DateTime<Utc>)> {
    let local = cfg.timezone.from_utc_datetime(&at.naive_utc());
    let mut best: Option<(&ScheduleEntry, DateTime<Utc>)> = None;
    for e in &cfg.schedule {
        let Ok(start) = e.cron.find_previous_occurrence(&local, true) else {
            continue;
        };
        let start = start.with_timezone(&Utc);
        let open = e
            .duration
            .is_none_or(|d| chrono::Duration::from_std(d).is_ok_and(|d| start + d > at));
        if open && best.is_none_or(|(_, b)| start > b) {
            best = Some((e, start));
        }
    }
    best
}

/// The pool's `min` and `max` at `at`, and the entry that set them.
pub fn bounds(cfg: &Autoscale, at: DateTime<Utc>) -> (u32, u32, Option<&ScheduleEntry>) {
    let Some((e, _)) = active(cfg, at) else {
        return (cfg.min, cfg.max, None);
    };
    let (mut min, mut max) = (e.min.unwrap_or(cfg.min), e.max.unwrap_or(cfg.max));
    if min > max {
        // The entry's own bound wins: a raised floor lifts the ceiling, a lowered ceiling
        // lowers the floor.
        if e.min.is_some() {
            max = min;
        } else {
            min = max;
        }
    }
    (min, max, Some(e))
}

/// The policy's limits at `at`: the pool's, with a schedule's bounds when one is in force.
pub fn limits_at(cfg: &Autoscale, at: DateTime<Utc>) -> Limits {
    let mut limits = Limits::from(cfg);
    let (min, max, entry) = bounds(cfg, at);
    if let Some(e) = entry {
        limits.min = min;
        limits.max = max;
        limits.bounds_from = Some(format!("schedule \"{}\"", e.pattern));
    }
    limits
}

/// The wall clock now.
pub fn now_utc() -> DateTime<Utc> {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos()).unwrap_or_default()
}

/// The policy's limits now.
pub fn limits_now(cfg: &Autoscale) -> Limits {
    limits_at(cfg, now_utc())
}

/// `/scaling/status`'s `schedule`: the entry in force (or null) and the next start.
pub fn status_json(cfg: &Autoscale, at: DateTime<Utc>) -> Value {
    if cfg.schedule.is_empty() {
        return Value::Null;
    }
    let local = cfg.timezone.from_utc_datetime(&at.naive_utc());
    let next = cfg
        .schedule
        .iter()
        .filter_map(|e| {
            let t = e.cron.find_next_occurrence(&local, false).ok()?;
            Some((t, e))
        })
        .min_by_key(|(t, _)| *t)
        .map(
            |(t, e)| json!({ "cron": e.pattern, "at": t.to_rfc3339(), "min": e.min, "max": e.max }),
        );
    let active = active(cfg, at).map(|(e, since)| {
        json!({
            "cron": e.pattern,
            "since": since.with_timezone(&cfg.timezone).to_rfc3339(),
            "until": e.duration.and_then(|d| chrono::Duration::from_std(d).ok())
                .map(|d| (since + d).with_timezone(&cfg.timezone).to_rfc3339()),
            "min": e.min,
            "max": e.max,
        })
    });
    json!({
        "timezone": cfg.timezone.name(),
        "active": active,
        "next": next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Autoscale {
        let yaml = format!(
            "listeners: [{{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}]
pools:
  web:
    autoscale:
      command: [app]
      ports: 3100-3199
      min: 2
      max: 8
      target: {{ inflight_per_instance: 10 }}
{extra}"
        );
        let c =
            crate::config::load_str(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        c.pools[0].autoscale.clone().expect("autoscale")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_latest_open_window_wins_in_the_pools_time_zone() {
        let c = cfg("      timezone: Europe/Paris
      schedule:
        - { cron: \"0 8 * * 1-5\", min: 4, max: 12 }
        - { cron: \"0 20 * * 1-5\", min: 1, max: 3 }
        - { cron: \"0 12 24 12 *\", duration: 2h, min: 10 }
");
        // Monday 7 December 2026, 08:30 in Paris (UTC+1) = 07:30 UTC.
        let (min, max, e) = bounds(&c, at("2026-12-07T07:30:00Z"));
        assert_eq!((min, max), (4, 12));
        assert_eq!(e.map(|e| e.pattern.as_str()), Some("0 8 * * 1-5"));
        // 06:59 UTC = 07:59 Paris: the evening entry of Friday still holds (weekend).
        assert_eq!(bounds(&c, at("2026-12-07T06:59:00Z")).0, 1);
        // Saturday: Friday's 20:00 entry.
        let (min, max, _) = bounds(&c, at("2026-12-12T10:00:00Z"));
        assert_eq!((min, max), (1, 3));
        // Christmas Eve (a Thursday) 12:00-14:00 Paris: min 10 over the morning's max 12.
        // Its max is the pool's 8 (not the morning entry's 12), lifted to its min 10.
        let (min, max, _) = bounds(&c, at("2026-12-24T11:30:00Z"));
        assert_eq!((min, max), (10, 10));
        let l = limits_at(&c, at("2026-12-24T11:30:00Z"));
        assert_eq!((l.min, l.max), (10, 10));
        assert_eq!(l.bounds_from.as_deref(), Some("schedule \"0 12 24 12 *\""));
        // Its two hours over: back to the morning entry.
        assert_eq!(bounds(&c, at("2026-12-24T13:00:00Z")).0, 4);
        let s = status_json(&c, at("2026-12-07T07:30:00Z"));
        assert_eq!(s["active"]["since"], "2026-12-07T08:00:00+01:00", "{s}");
        assert_eq!(s["next"]["at"], "2026-12-07T20:00:00+01:00", "{s}");
    }

    #[test]
    fn without_a_started_entry_the_pools_bounds_apply() {
        let c = cfg("      schedule: [{ cron: \"0 9 29 2 *\", duration: 1h, max: 4 }]\n");
        let l = limits_at(&c, at("2026-12-07T07:30:00Z"));
        assert_eq!((l.min, l.max, l.bounds_from), (2, 8, None));
        // Within its hour (29 February 2028), its max with the pool's min.
        let l = limits_at(&c, at("2028-02-29T09:30:00Z"));
        assert_eq!((l.min, l.max), (2, 4));
        // A ceiling below the pool's min lowers the floor too.
        let c = cfg("      schedule: [{ cron: \"* * * * *\", max: 1 }]\n");
        let l = limits_at(&c, at("2026-12-07T07:30:00Z"));
        assert_eq!((l.min, l.max), (1, 1));
    }
}
