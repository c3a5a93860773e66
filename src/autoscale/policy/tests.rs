//! The policy under paused time: HPA formula, tolerance, stabilization, panic, bounds,
//! starting-instance accounting, manual holds, scale from zero, forecasts, and the reason
//! of each decision naming the rule that decided it.

use super::*;

fn limits() -> Limits {
    Limits {
        min: 1,
        max: 10,
        target: ScaleTarget {
            inflight_per_instance: Some(50),
            ..Default::default()
        },
        up_step: 4,
        down_step: 1,
        stabilization: Duration::from_secs(300),
        manual_hold: Duration::from_secs(600),
        panic_ratio: Some(PANIC_RATIO),
        bounds_from: None,
    }
}

fn load(ready: u32, starting: u32, inflight: f64) -> Signals {
    Signals {
        ready,
        starting,
        inflight_per_instance: inflight,
        ..Default::default()
    }
}

#[track_caller]
fn says(d: &Decision, parts: &[&str], never: &[&str]) {
    for p in parts {
        assert!(d.reason.contains(p), "{:?} lacks {p:?}", d.reason);
    }
    for n in never {
        assert!(!d.reason.contains(n), "{:?} has {n:?}", d.reason);
    }
}

#[tokio::test(start_paused = true)]
async fn hpa_formula_with_tolerance() {
    let mut p = Policy::default();
    let now = Instant::now();
    // 2 instances at 75 in flight each vs 50: ceil(2 * 1.5) = 3.
    let d = p.decide(&limits(), &load(2, 0, 75.0), now);
    assert_eq!(d.desired, 3);
    says(
        &d,
        &["scale up to 3: inflight_per_instance 75.0/50 (1.50x) wants 3"],
        &["panic", "max_step"],
    );
    // Within 10% of the target: no change.
    let d = p.decide(&limits(), &load(4, 0, 54.0), now);
    assert_eq!(d.desired, 4, "{}", d.reason);
    says(&d, &["steady at 4: ", "within 10% of the target"], &[]);
}

#[tokio::test(start_paused = true)]
async fn the_largest_target_wins() {
    let mut l = limits();
    l.target.cpu_percent = Some(70);
    let mut s = load(2, 0, 25.0); // inflight says 1
    s.cpu_percent = Some(140.0); // cpu says 4 (and panics: 2x)
    let d = Policy::default().decide(&l, &s, Instant::now());
    assert_eq!(d.desired, 4, "{}", d.reason);
    says(&d, &["cpu_percent 140.0/70 (2.00x) wants 4, panic"], &[]);
    assert!(d.panic);
}

#[tokio::test(start_paused = true)]
async fn scale_up_is_bounded_by_max_step_in_panic_too() {
    // The case of the issue: 2 ready at 4x the target want 8; max_step 4 gives 6.
    let d = Policy::default().decide(&limits(), &load(2, 0, 200.0), Instant::now());
    assert!(d.panic);
    assert_eq!(d.desired, 6, "{}", d.reason);
    says(
        &d,
        &[
            "scale up to 6: inflight_per_instance 200.0/50 (4.00x) wants 8, panic (",
            "; limited to +4 by scale_up.max_step",
        ],
        &["max 10"],
    );
    // Below panic the step applies the same way.
    let mut l = limits();
    l.up_step = 1;
    let d = Policy::default().decide(&l, &load(2, 0, 95.0), Instant::now());
    assert_eq!(d.desired, 3);
    says(&d, &["limited to +1 by scale_up.max_step"], &["panic"]);
    // The next decision steps again from the new capacity (starting ones included).
    let mut p = Policy::default();
    assert_eq!(p.decide(&l, &load(2, 0, 150.0), Instant::now()).desired, 3);
    assert_eq!(p.decide(&l, &load(2, 1, 150.0), Instant::now()).desired, 4);
    // A step that reaches no further than the recommendation is not mentioned.
    let d = Policy::default().decide(&limits(), &load(2, 0, 110.0), Instant::now());
    assert_eq!(d.desired, 5);
    says(&d, &["wants 5, panic"], &["max_step"]);
}

#[tokio::test(start_paused = true)]
async fn starting_instances_count_as_capacity() {
    let mut p = Policy::default();
    // Wants 3 (2 * 1.5); 2 ready + 1 starting = 3 already: no more.
    let d = p.decide(&limits(), &load(2, 1, 75.0), Instant::now());
    assert_eq!(d.desired, 3, "{}", d.reason);
    says(&d, &["steady at 3: "], &[]);
    // Wants 6 (2 * 3.0): 3 capacity, adds 3.
    let d = p.decide(&limits(), &load(2, 1, 150.0), Instant::now());
    assert_eq!(d.desired, 6);
}

#[tokio::test(start_paused = true)]
async fn scale_down_waits_for_the_window_then_max_step_decides() {
    let mut p = Policy::default();
    let l = limits();
    let start = Instant::now();
    assert_eq!(p.decide(&l, &load(4, 0, 50.0), start).desired, 4);
    // Load drops: the window still remembers 4.
    for s in [10u64, 100, 290] {
        tokio::time::advance(Duration::from_secs(s) - start.elapsed()).await;
        let d = p.decide(&l, &load(4, 0, 5.0), Instant::now());
        assert_eq!(d.desired, 4, "at {s}s: {}", d.reason);
        says(
            &d,
            &[
                "hold at 4: inflight_per_instance 5.0/50 (0.10x) wants 1",
                "highest recommendation of the last 300s (scale_down.stabilization) is 4",
            ],
            &["scale down"],
        );
    }
    // Past the window: the window says 1, max_step says 3: max_step decided 4 -> 3.
    tokio::time::advance(Duration::from_secs(301) - start.elapsed()).await;
    let d = p.decide(&l, &load(4, 0, 5.0), Instant::now());
    assert_eq!(d.desired, 3, "{}", d.reason);
    says(
        &d,
        &[
            "scale down to 3: ",
            "wants 1; limited to -1 by scale_down.max_step",
        ],
        &["stabiliz", "clamp"],
    );
    let d = p.decide(&l, &load(3, 0, 5.0), Instant::now());
    assert_eq!(d.desired, 2);
}

#[tokio::test(start_paused = true)]
async fn the_window_decides_a_partial_scale_down() {
    let mut l = limits();
    l.down_step = 5;
    let mut p = Policy::default();
    // 6 running at half the target: recommendations of 6 (the start) and 3, held.
    let d = p.decide(&l, &load(6, 0, 25.0), Instant::now());
    assert_eq!(d.desired, 6);
    says(&d, &["hold at 6: ", "wants 3", "is 6"], &[]);
    tokio::time::advance(Duration::from_secs(200)).await;
    assert_eq!(p.decide(&l, &load(6, 0, 25.0), Instant::now()).desired, 6);
    // At 301s the first two left the window: a 3 (at 200s) and now a 1 remain. The step
    // would allow 1: the window decides 3.
    tokio::time::advance(Duration::from_secs(101)).await;
    let d = p.decide(&l, &load(6, 0, 5.0), Instant::now());
    assert_eq!(d.desired, 3, "{}", d.reason);
    says(
        &d,
        &[
            "scale down to 3: ",
            "wants 1; highest recommendation of the last 300s (scale_down.stabilization) is 3",
        ],
        &["max_step"],
    );
}

#[tokio::test(start_paused = true)]
async fn no_scale_down_in_a_panic_window() {
    let mut p = Policy::default();
    let l = limits();
    assert!(p.decide(&l, &load(2, 0, 200.0), Instant::now()).panic);
    tokio::time::advance(Duration::from_secs(400)).await;
    // 400s > 300s: the panic is over.
    let d = p.decide(&l, &load(8, 0, 1.0), Instant::now());
    assert_eq!(d.desired, 7, "{}", d.reason);
    let mut p = Policy::default();
    assert!(p.decide(&l, &load(2, 0, 200.0), Instant::now()).panic);
    tokio::time::advance(Duration::from_secs(100)).await;
    let d = p.decide(&l, &load(8, 0, 1.0), Instant::now());
    assert_eq!(d.desired, 8, "held during the panic window: {}", d.reason);
    says(
        &d,
        &[
            "hold at 8: ",
            "no scale-down within 300s of a panic (200s left)",
        ],
        &[],
    );
    // Without panic (HPA-like), nothing holds but the window.
    let mut l = limits();
    l.panic_ratio = None;
    let d = Policy::default().decide(&l, &load(2, 0, 200.0), Instant::now());
    assert!(!d.panic);
    says(&d, &["wants 8"], &["panic"]);
}

#[tokio::test(start_paused = true)]
async fn bounds_are_said_only_when_they_decide() {
    let mut p = Policy::default();
    let l = limits();
    let d = p.decide(&l, &load(8, 0, 500.0), Instant::now());
    assert_eq!(d.desired, 10);
    says(
        &d,
        &["scale up to 10: ", "wants 80", "; not above max 10"],
        &["max_step"],
    );
    // At min already, a lower recommendation holds: no scale-down said, no clamp.
    let mut l = limits();
    l.min = 2;
    l.stabilization = Duration::from_secs(1);
    let mut p = Policy::default();
    p.decide(&l, &load(2, 0, 10.0), Instant::now());
    tokio::time::advance(Duration::from_secs(2)).await;
    let d = p.decide(&l, &load(2, 0, 10.0), Instant::now());
    assert_eq!(d.desired, 2);
    says(
        &d,
        &["hold at 2: inflight_per_instance 10.0/50 (0.20x) wants 1; not below min 2"],
        &["scale down", "clamp", "max_step"],
    );
    // 3 -> 2 when the window and the step would allow 1: min decided.
    let mut l2 = l.clone();
    l2.down_step = 2;
    let d = p.decide(&l2, &load(3, 0, 10.0), Instant::now());
    assert_eq!(d.desired, 2);
    says(
        &d,
        &["scale down to 2: ", "; not below min 2"],
        &["max_step"],
    );
    // A schedule's bounds say where they come from.
    l.bounds_from = Some("schedule \"0 8 * * 1-5\"".into());
    l.min = 4;
    let d = p.decide(&l, &load(2, 0, 10.0), Instant::now());
    assert_eq!(d.desired, 4);
    says(
        &d,
        &[
            "scale up to 4: ",
            "; not below min 4 (schedule \"0 8 * * 1-5\")",
        ],
        &[],
    );
}

#[tokio::test(start_paused = true)]
async fn manual_holds() {
    let mut p = Policy::default();
    let l = limits();
    p.set_manual(2, Instant::now(), l.manual_hold);
    let d = p.decide(&l, &load(8, 0, 500.0), Instant::now());
    assert_eq!(d.desired, 2);
    says(&d, &["scale down to 2: manual hold of 2 (600s left)"], &[]);
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(p.decide(&l, &load(2, 0, 100.0), Instant::now()).desired, 4);
}

#[tokio::test(start_paused = true)]
async fn start_from_zero_and_scale_to_zero() {
    // At start, nothing runs: min decides, and says so.
    let d = Policy::default().decide(&limits(), &load(0, 0, 0.0), Instant::now());
    assert_eq!(d.desired, 1);
    says(
        &d,
        &["scale up to 1: start at min 1"],
        &["no demand", "clamp"],
    );
    let mut l = limits();
    l.min = 0;
    l.stabilization = Duration::from_secs(30);
    let mut p = Policy::default();
    let idle = load(0, 0, 0.0);
    let d = p.decide(&l, &idle, Instant::now());
    assert_eq!(d.desired, 0);
    says(&d, &["steady at 0: no instance and no demand"], &[]);
    let waiting = Signals {
        cold_waiters: 3,
        ..idle
    };
    let d = p.decide(&l, &waiting, Instant::now());
    assert_eq!(d.desired, 1, "{}", d.reason);
    says(
        &d,
        &["scale up to 1: scale from zero: 3 requests waiting"],
        &[],
    );
    let starting = Signals {
        starting: 1,
        ..waiting
    };
    let d = p.decide(&l, &starting, Instant::now());
    assert_eq!(d.desired, 1);
    says(&d, &["steady at 1: no instance ready yet, 1 starting"], &[]);
    // One ready instance, idle: zero after the stabilization window.
    assert_eq!(p.decide(&l, &load(1, 0, 0.0), Instant::now()).desired, 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    let d = p.decide(&l, &load(1, 0, 0.0), Instant::now());
    assert_eq!(d.desired, 0, "{}", d.reason);
    says(&d, &["scale down to 0: "], &[]);
}

#[tokio::test(start_paused = true)]
async fn a_forecast_raises_but_never_lowers() {
    let l = limits();
    let high = Forecast {
        desired: 6,
        why: "demand 270 in 60s".into(),
    };
    let d = Policy::default().decide_with(&l, &load(2, 0, 50.0), Some(&high), Instant::now());
    assert_eq!(d.desired, 6, "{}", d.reason);
    says(
        &d,
        &["scale up to 6: prediction wants 6 (demand 270 in 60s); reactive: inflight_per_instance"],
        &[],
    );
    let low = Forecast {
        desired: 1,
        why: "demand 20 in 60s".into(),
    };
    let d = Policy::default().decide_with(&l, &load(2, 0, 100.0), Some(&low), Instant::now());
    assert_eq!(d.desired, 4, "the reactive rule wins: {}", d.reason);
    says(
        &d,
        &[
            "scale up to 4: inflight_per_instance",
            "; prediction wants 1 (demand 20 in 60s), lower",
        ],
        &[],
    );
    // A predicted rise keeps the size through the window like any recommendation.
    let mut p = Policy::default();
    p.decide_with(&l, &load(2, 0, 50.0), Some(&high), Instant::now());
    tokio::time::advance(Duration::from_secs(60)).await;
    let d = p.decide_with(&l, &load(6, 0, 10.0), Some(&low), Instant::now());
    assert_eq!(d.desired, 6, "{}", d.reason);
}

fn queue_limits() -> Limits {
    Limits {
        min: 0,
        target: ScaleTarget {
            redis_list: Some(5.0),
            inflight_per_instance: Some(50),
            ..Default::default()
        },
        stabilization: Duration::ZERO,
        ..limits()
    }
}

#[tokio::test(start_paused = true)]
async fn external_values_are_held_per_instance_and_missing_data_holds() {
    let mut p = Policy::default();
    let now = Instant::now();
    let queue = |ready: u32, len: Option<f64>| Signals {
        ready,
        redis_list: len,
        ..Default::default()
    };
    // No instance, a queue with work: one starts.
    let d = p.decide(&queue_limits(), &queue(0, Some(12.0)), now);
    assert_eq!(d.desired, 1);
    says(&d, &["scale from zero: redis_list is 12"], &[]);
    // 12 items at 5 per instance: ceil(12 / 5) = 3, whatever the instances now.
    let d = p.decide(&queue_limits(), &queue(1, Some(12.0)), now);
    assert_eq!(d.desired, 3, "{}", d.reason);
    says(&d, &["redis_list 12.0/5 (2.40x) wants 3"], &[]);
    // 15 items on 3 instances: right at the target.
    let d = p.decide(&queue_limits(), &queue(3, Some(15.0)), now);
    assert_eq!(d.desired, 3, "{}", d.reason);
    // The source is gone: the other target alone would scale in to 1; the size holds.
    let d = p.decide(&queue_limits(), &queue(3, None), now);
    assert_eq!(d.desired, 3, "{}", d.reason);
    says(&d, &["redis_list has no data: holds 3"], &[]);
    // ... but a rise of another target still scales up.
    let busy = Signals {
        inflight_per_instance: 100.0,
        ..queue(3, None)
    };
    assert_eq!(p.decide(&queue_limits(), &busy, now).desired, 6);
    // Back with an empty queue: scale in (step 1, no stabilization here).
    let later = now + Duration::from_secs(1);
    let d = p.decide(&queue_limits(), &queue(3, Some(0.0)), later);
    assert_eq!(d.desired, 2, "{}", d.reason);
}
