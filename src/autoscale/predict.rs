//! Predictive pre-scaling as pure code: the daily and weekly shape of a pool's demand,
//! learnt per minute of the day and of the week, and the size it asks for `lookahead`
//! ahead. The demand is counted in instances needed (`policy::need`), so the shape stays
//! right when the pool's size changes.
//!
//! Each minute slot keeps the highest need seen in it, folded into the slot's memory as an
//! exponential average over the days (or weeks) seen: a recurring rise raises its slot,
//! a one-off spike fades. The forecast is the highest remembered need over the coming
//! `lookahead`, from the weekly shape once a week is known, else from the daily one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Forecast;

const SLOT_SECS: i64 = 60;
const DAY_SLOTS: usize = 1440;
const WEEK_SLOTS: usize = 7 * DAY_SLOTS;
/// Weight of the newest day (or week) in a slot's memory.
const ALPHA: f32 = 0.5;

/// What has been learnt of one pool's demand; serializable, to keep it in the shared state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Predictor {
    /// Unix seconds of the first observation.
    first: Option<i64>,
    /// Remembered need per minute of the day and of the week (UTC); negative: never seen.
    day: Vec<f32>,
    week: Vec<f32>,
    /// The minute being observed and its highest need so far.
    current: Option<(i64, f32)>,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor {
            first: None,
            day: vec![-1.0; DAY_SLOTS],
            week: vec![-1.0; WEEK_SLOTS],
            current: None,
        }
    }
}

fn fold(memory: &mut f32, seen: f32) {
    *memory = if *memory < 0.0 {
        seen
    } else {
        ALPHA * seen + (1.0 - ALPHA) * *memory
    };
}

impl Predictor {
    /// Record the need (instances, fractional) at `unix` seconds.
    pub fn observe(&mut self, unix: i64, need: f64) {
        let slot = unix.div_euclid(SLOT_SECS);
        self.first.get_or_insert(unix);
        let need = need.max(0.0) as f32;
        match &mut self.current {
            Some((s, max)) if *s == slot => *max = max.max(need),
            _ => {
                self.commit();
                self.current = Some((slot, need));
            }
        }
    }

    /// Fold the finished minute into the shapes.
    fn commit(&mut self) {
        if let Some((slot, max)) = self.current.take() {
            fold(
                &mut self.day[slot.rem_euclid(DAY_SLOTS as i64) as usize],
                max,
            );
            fold(
                &mut self.week[slot.rem_euclid(WEEK_SLOTS as i64) as usize],
                max,
            );
        }
    }

    /// How much history there is at `unix`.
    pub fn history(&self, unix: i64) -> Duration {
        self.first.map_or(Duration::ZERO, |f| {
            Duration::from_secs((unix - f).max(0) as u64)
        })
    }

    /// The size the demand of the coming `lookahead` needs, or why there is none yet.
    pub fn forecast(
        &self,
        unix: i64,
        lookahead: Duration,
        min_history: Duration,
    ) -> Result<Forecast, String> {
        let history = self.history(unix);
        if history < min_history {
            return Err(format!(
                "prediction learning ({} of {} history)",
                short(history),
                short(min_history)
            ));
        }
        let weekly = history >= Duration::from_secs(7 * 86_400);
        let (shape, len) = if weekly {
            (&self.week, WEEK_SLOTS as i64)
        } else {
            (&self.day, DAY_SLOTS as i64)
        };
        let from = unix.div_euclid(SLOT_SECS);
        let to = (unix + lookahead.as_secs() as i64).div_euclid(SLOT_SECS);
        let mut best: Option<(f32, i64)> = None;
        for slot in from..=to {
            let v = shape[slot.rem_euclid(len) as usize];
            if v >= 0.0 && best.is_none_or(|(b, _)| v > b) {
                best = Some((v, slot));
            }
        }
        let Some((need, slot)) = best else {
            return Err("prediction has no history for the coming minutes".into());
        };
        let ahead = (slot * SLOT_SECS - unix).max(0);
        Ok(Forecast {
            desired: (f64::from(need) - 1e-6).ceil().max(0.0) as u32,
            why: format!(
                "{} shape: {need:.1} instances needed in {ahead}s",
                if weekly { "weekly" } else { "daily" },
            ),
        })
    }
}

/// One decision's use of the prediction: record the need at `unix`, then the forecast, or
/// the note saying why there is none (said in the decision's reason).
pub fn consult(
    predictor: &mut Predictor,
    cfg: Option<crate::config::Predictive>,
    limits: &super::policy::Limits,
    signals: &super::policy::Signals,
    unix: i64,
) -> (Option<Forecast>, Option<String>) {
    let Some(cfg) = cfg else {
        return (None, None);
    };
    if signals.ready > 0 {
        predictor.observe(unix, super::policy::need(limits, signals));
    }
    match predictor.forecast(unix, cfg.lookahead, cfg.min_history) {
        Ok(f) => (Some(f), None),
        Err(note) => (None, Some(note)),
    }
}

impl Predictor {
    /// Unix seconds of the first observation.
    pub fn first(&self) -> Option<i64> {
        self.first
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    /// A day of need 2, with 10 from 09:00 to 10:00.
    fn need_at(t: i64) -> f64 {
        let h = t.rem_euclid(DAY) / 3600;
        if h == 9 {
            10.0
        } else {
            2.0
        }
    }

    #[test]
    fn learns_a_daily_rise_and_asks_for_it_ahead() {
        let mut p = Predictor::default();
        let la = Duration::from_secs(120);
        let min = Duration::from_secs(DAY as u64);
        for t in (0..DAY).step_by(5) {
            p.observe(t, need_at(t));
        }
        // Not a full day yet.
        let e = p.forecast(DAY - 5, la, min).expect_err("learning");
        assert!(
            e.starts_with("prediction learning (23h59m of 1d history)"),
            "{e}"
        );
        // The next day at 08:58:30: the 09:00 slot is within the lookahead.
        let t = DAY + 9 * 3600 - 90;
        p.observe(t, 2.0);
        let f = p.forecast(t, la, min).expect("forecast");
        assert_eq!(f.desired, 10, "{f:?}");
        assert_eq!(f.why, "daily shape: 10.0 instances needed in 90s");
        // At 07:00 nothing rises within two minutes.
        let f = p.forecast(DAY + 7 * 3600, la, min).expect("forecast");
        assert_eq!(f.desired, 2, "{f:?}");
        // A one-off spike fades: seen once at 03:00 on day 2, halved on day 3.
        let spike = 2 * DAY + 3 * 3600;
        p.observe(spike, 20.0);
        p.observe(spike + 60, 2.0);
        p.observe(3 * DAY + 3 * 3600, 2.0);
        p.observe(3 * DAY + 3 * 3600 + 60, 2.0);
        let f = p
            .forecast(4 * DAY + 3 * 3600 - 30, la, min)
            .expect("forecast");
        assert!(f.desired < 20 && f.desired >= 2, "{f:?}");
    }

    #[test]
    fn the_weekly_shape_once_a_week_is_known_and_it_round_trips() {
        let mut p = Predictor::default();
        // Weekdays need 8 at 12:00; weekends 1 (day 0 is a Thursday: 1970-01-01).
        for t in (0..8 * DAY).step_by(60) {
            let weekend = matches!(t.div_euclid(DAY) % 7, 2 | 3);
            p.observe(t, if weekend { 1.0 } else { 8.0 });
        }
        let la = Duration::from_secs(60);
        // Day 9 is a Saturday: the weekly shape remembers Saturday's 1, not Friday's 8.
        let f = p
            .forecast(9 * DAY + 12 * 3600, la, Duration::from_secs(3600))
            .expect("f");
        assert_eq!(f.desired, 1, "{f:?}");
        assert!(f.why.starts_with("weekly shape"), "{f:?}");
        let back: Predictor =
            serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("parse");
        let g = back.forecast(9 * DAY + 12 * 3600, la, Duration::from_secs(3600));
        assert_eq!(g, Ok(f));
    }
}
