//! The autoscaler's rules as a user sees them through the real program: the reason of each
//! decision names the rule that decided (start at min, scale_up.max_step in panic, min),
//! and a scale-in drains the instance with the fewest WebSockets and sticky sessions, then
//! the fewest requests in flight, and says which and why in the event.

mod common;

use common::{scaling, wait_scaling};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Autolb, Client};
use serde_json::Value;

const TOKEN: &str = "rules-token-42";

/// An autoscaled pool `web` of autolb-echo instances with sticky cookies.
fn scaled(min: u32, max: u32, extra: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32 % 10;
    // Ports of their own (below the ephemeral range), apart from tests/autoscale.rs's.
    let lo = 30_000 + (std::process::id() % 40) * 500 + n * 50;
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\", token_env: AUTOLB_TEST_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    balance: least_conn
    sticky: {{ cookie: {{ name: SRV }} }}
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: {min}
      max: {max}
      interval: 300ms
      target: {{ inflight_per_instance: 2 }}
      drain_timeout: 20s
      stop_grace: 2s
{extra}",
        echo = common::ECHO,
        hi = lo + 49,
    )
}

fn start(yaml: &str) -> Autolb {
    Autolb::start_with_env(yaml, &[("AUTOLB_TEST_TOKEN", TOKEN)])
}

async fn manual(lb: &Autolb, n: u32) -> Value {
    let body = format!(r#"{{"pool":"web","instances":{n},"reason":"test"}}"#);
    let r = common::admin_post(lb.admin, "/scaling/manual", Some(TOKEN), &[], &body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()
}

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn scale_in_drains_the_instance_without_sessions_first_and_says_why() {
    let lb = start(&scaled(1, 4, "      manual_hold: 10m\n"));
    wait_scaling(&lb, 20, "one ready", |s| s["current"] == 1).await;
    manual(&lb, 4).await;
    wait_scaling(&lb, 20, "four ready", |s| s["current"] == 4).await;
    let web = lb.addr("web");

    // A long request on one instance (Y)...
    let slow = tokio::spawn(async move { common::get(web, "/delay/10000").await });
    let y = common::wait_until(10, "the slow request in flight", || async {
        common::instances(&lb)
            .await
            .iter()
            .find(|i| i["in_flight"].as_u64() >= Some(1))
            .map(|i| i["id"].as_str().unwrap_or("").to_string())
    })
    .await;
    // ... a WebSocket on another (X: least_conn avoids Y) ...
    let (mut ws, _) = common::ws_connect(web, "/ws", &[]).await;
    let x = common::ws_text(&mut ws).await;
    assert_ne!(x, y);
    // ... and a sticky client on a third (S), pinned by its cookie for three requests.
    let mut c = Client::connect(web).await;
    let first = c.get("/").await;
    let s = first.text();
    let (cookie, _) = common::set_cookie(&first.headers, "SRV").expect("a sticky cookie");
    assert!(s != x && s != y, "x {x}, y {y}, s {s}");
    for _ in 0..3 {
        let r = c.get_with("/", &[("cookie", &cookie)]).await;
        assert_eq!(r.text(), s, "pinned");
    }
    let all: Vec<String> = common::instances(&lb)
        .await
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    let t = all
        .iter()
        .find(|i| **i != x && **i != y && **i != s)
        .expect("a fourth instance")
        .clone();

    // 4 -> 3: T and Y have no session; T has nothing in flight.
    let e = manual(&lb, 3).await["event"].clone();
    let v = &e["victims"][0];
    assert_eq!(v["instance"], t.as_str(), "{e}");
    assert!(
        v["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("fewest requests in flight (0, next 1)")),
        "{e}"
    );
    // 3 -> 2: Y has no WebSocket and no sticky session.
    let e = manual(&lb, 2).await["event"].clone();
    let v = &e["victims"][0];
    assert_eq!(v["instance"], y.as_str(), "{e}");
    assert!(
        v["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("fewest WebSockets and sticky sessions (0 + 0, next")),
        "{e}"
    );
    // 2 -> 1: X's one WebSocket weighs less than S's three sticky requests.
    let e = manual(&lb, 1).await["event"].clone();
    let v = &e["victims"][0];
    assert_eq!(v["instance"], x.as_str(), "{e}");
    assert_eq!(v["websockets"], 1, "{e}");
    assert!(
        v["why"].as_str().is_some_and(
            |w| w.starts_with("fewest WebSockets and sticky sessions (1 + 0, next 0 + 3)")
        ),
        "{e}"
    );
    // Draining Y let its request finish; the events stay in /scaling/status.
    let r = slow.await.expect("slow request");
    assert_eq!(r.status, 200, "{}", r.text());
    let st = scaling(&lb).await;
    assert_eq!(
        st["events"][0]["victims"][0]["instance"],
        x.as_str(),
        "{st}"
    );
    drop(ws);
}

#[tokio::test]
async fn reasons_name_the_rule_start_at_min_max_step_in_panic_and_min() {
    let extra = "      scale_up: { max_step: 1 }\n      scale_down: { stabilization: 1s }\n";
    let lb = start(&scaled(1, 6, extra));
    let s = wait_scaling(&lb, 20, "one ready", |s| s["current"] == 1).await;
    let first = s["events"].as_array().and_then(|e| e.last()).cloned();
    let first = first.expect("the start event");
    assert_eq!(
        (first["from"].as_u64(), first["to"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(reason(&first), "scale up to 1: start at min 1", "{s}");

    // 12 concurrent slow requests on one instance: 12x the target, panic; one step only.
    let stop = Arc::new(AtomicBool::new(false));
    let web = lb.addr("web");
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(web).await;
                for _ in 0..200 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = c.get("/delay/300").await;
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    let s = wait_scaling(&lb, 30, "a scale-up in panic", |s| {
        s["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| reason(e).contains(", panic (")))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let ups: Vec<&Value> = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["from"].as_u64() >= Some(1) && e["to"].as_u64() > e["from"].as_u64())
        .collect();
    for up in &ups {
        let (from, to) = (up["from"].as_u64(), up["to"].as_u64());
        assert_eq!(
            to,
            from.map(|f| f + 1),
            "max_step 1 bounds every scale-up: {s}"
        );
    }
    let panic = ups
        .iter()
        .find(|e| reason(e).contains(", panic ("))
        .expect("the panic scale-up");
    let r = reason(panic);
    assert!(r.starts_with("scale up to "), "{r}");
    assert!(r.contains(": inflight_per_instance "), "{r}");
    assert!(r.ends_with("; limited to +1 by scale_up.max_step"), "{r}");
    for t in tasks {
        t.await.expect("load task");
    }
    // Idle at min: the decision holds at min and says so; never "scale down" to the size
    // it already has.
    let s = wait_scaling(&lb, 60, "back at one, held by min", |s| {
        s["current"] == 1
            && s["draining"] == 0
            && s["last_decision"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("hold at 1: ") && r.ends_with("; not below min 1"))
    })
    .await;
    assert!(
        s["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["from"] != e["to"]),
        "{s}"
    );
}

#[tokio::test]
async fn a_schedule_in_force_sets_the_bounds_and_says_so() {
    // Every minute starts the entry again: it is always in force.
    let extra = "      timezone: Europe/Paris\n      schedule:\n        - { cron: \"* * * * *\", min: 3 }\n";
    let lb = start(&scaled(1, 4, extra));
    let s = wait_scaling(&lb, 20, "three ready", |s| s["current"] == 3).await;
    assert_eq!(
        (s["min"].as_u64(), s["max"].as_u64()),
        (Some(3), Some(4)),
        "{s}"
    );
    let sched = &s["schedule"];
    assert_eq!(sched["timezone"], "Europe/Paris", "{s}");
    assert_eq!(sched["active"]["cron"], "* * * * *", "{s}");
    assert_eq!(sched["active"]["min"], 3, "{s}");
    assert!(
        sched["active"]["since"]
            .as_str()
            .is_some_and(|t| t.ends_with(":00+01:00") || t.ends_with(":00+02:00")),
        "{s}"
    );
    let first = s["events"].as_array().and_then(|e| e.last()).cloned();
    let first = first.expect("the start event");
    assert_eq!(
        reason(&first),
        "scale up to 3: start at min 3 (schedule \"* * * * *\")",
        "{s}"
    );
    // A manual size below the schedule's floor is raised to it.
    let m = manual(&lb, 1).await;
    assert_eq!(
        (m["instances"].as_u64(), m["min"].as_u64()),
        (Some(3), Some(3)),
        "{m}"
    );
}
