//! Outlier ejection under paused time, over pools built from real config text.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::runtime::Snapshot;

fn pool(outlier: &str, backends: usize) -> Arc<Pool> {
    let list: String = (0..backends)
        .map(|i| format!("      - {{ address: \"127.0.0.1:{}\" }}\n", 3001 + i))
        .collect();
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", pool: web }}
pools:
  web:
    outlier: {outlier}
    backends:
{list}"
    );
    let cfg = crate::config::load_str(&yaml, Path::new("t.yaml")).expect("valid config");
    let snap = Snapshot::build(&crate::runtime::Inputs::new(cfg), None, 1);
    snap.pools[0].clone()
}

fn fail(p: &Pool, i: usize, outcome: Outcome, n: usize, events: &Arc<EventLog>) {
    for _ in 0..n {
        observe(p, &p.backends[i], outcome, events);
    }
}

fn ejected(p: &Pool, i: usize) -> bool {
    p.backends[i].stats.ejected.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn ejection_doubles_up_to_the_cap_and_timers_lift_it() {
    let p = pool(
        "{ consecutive_failures: 3, ejection: 10s, max_ejection: 35s }",
        3,
    );
    let ev = Arc::new(EventLog::default());
    fail(&p, 0, Outcome::ConnectFailure, 2, &ev);
    assert!(!ejected(&p, 0));
    fail(&p, 0, Outcome::Status5xx, 1, &ev);
    assert!(ejected(&p, 0));
    assert!(!p.backends[0].usable());

    for expected in [10u64, 20, 35, 35] {
        if !ejected(&p, 0) {
            fail(&p, 0, Outcome::Timeout, 3, &ev);
        }
        tokio::time::sleep(Duration::from_secs(expected) - Duration::from_millis(10)).await;
        assert!(ejected(&p, 0), "still ejected just before {expected}s");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!ejected(&p, 0), "lifted after {expected}s");
    }
    let kinds: Vec<&str> = ev.recent().iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "ejected").count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == "ejection_lifted").count(), 4);
}

#[tokio::test(start_paused = true)]
async fn successes_reset_the_count_and_uncounted_failures_are_ignored() {
    let p = pool(
        "{ consecutive_failures: 3, ejection: 10s, count: [connect_failure] }",
        3,
    );
    let ev = Arc::new(EventLog::default());
    fail(&p, 1, Outcome::ConnectFailure, 2, &ev);
    fail(&p, 1, Outcome::Success, 1, &ev);
    fail(&p, 1, Outcome::ConnectFailure, 2, &ev);
    assert!(!ejected(&p, 1));
    fail(&p, 1, Outcome::Status5xx, 10, &ev);
    assert!(!ejected(&p, 1), "5xx does not count here");
    fail(&p, 1, Outcome::ConnectFailure, 1, &ev);
    assert!(ejected(&p, 1));
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_ejection_percent() {
    let p = pool("{ consecutive_failures: 1, ejection: 10s }", 4);
    let ev = Arc::new(EventLog::default());
    for i in 0..4 {
        fail(&p, i, Outcome::Reset, 1, &ev);
    }
    let n = (0..4).filter(|&i| ejected(&p, i)).count();
    assert_eq!(n, 2, "50% of 4");
    let single = pool("{ consecutive_failures: 1, ejection: 10s }", 1);
    fail(&single, 0, Outcome::Reset, 5, &ev);
    assert!(!ejected(&single, 0), "the only backend is never ejected");
}

#[tokio::test(start_paused = true)]
async fn lift_is_idempotent_and_starts_no_timer_race() {
    let p = pool("{ consecutive_failures: 1, ejection: 10s }", 2);
    let ev = Arc::new(EventLog::default());
    fail(&p, 0, Outcome::Reset, 1, &ev);
    lift("web", &p.backends[0], &ev, "test");
    lift("web", &p.backends[0], &ev, "test");
    assert!(!ejected(&p, 0));
    // Ejected again at 5s: the first timer (due at 10s) must not lift the second ejection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    fail(&p, 0, Outcome::Reset, 1, &ev);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(ejected(&p, 0), "the old timer left the new ejection alone");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(!ejected(&p, 0));
}
