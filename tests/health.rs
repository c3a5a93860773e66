//! Active health checks through the real program: rise/fall, transitions in status, metrics
//! and events, backends added while running, slow start, panic mode and Retry-After.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, Autolb, Client};
use serde_json::Value;

/// A backend whose `/health` answers 200 or 503 as `healthy` says; `/` answers its name.
async fn switchable(name: &'static str, healthy: Arc<AtomicBool>) -> SocketAddr {
    common::hyper_backend(move |req| {
        let ok = healthy.load(Ordering::SeqCst);
        async move {
            let status = if req.uri().path() == "/health" && !ok {
                503
            } else {
                200
            };
            http::Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    name.as_bytes(),
                )))
                .expect("response")
        }
    })
    .await
}

async fn backend_status(lb: &Autolb, i: usize) -> Value {
    let s = common::get(lb.admin, "/loadbalancer/status").await.json();
    s["pools"][0]["backends"][i].clone()
}

/// Poll the status until backend `i` satisfies `cond`, for at most 20 s.
async fn wait_for(lb: &Autolb, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    common::wait_for_value(
        20,
        || backend_status(lb, i),
        cond,
        |b| format!("backend {i} never {what}: {b}"),
    )
    .await
}

async fn wait_health(lb: &Autolb, i: usize, health: &str) -> Value {
    wait_for(lb, i, health, |b| b["health"] == health).await
}

fn checked_pool(addrs: &[SocketAddr], extra: &str) -> String {
    let list = common::backend_list(addrs, "");
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    health_check: {{ type: http, path: /health, interval: 100ms, \
             timeout: 100ms, rise: 2, fall: 3 }}\n{extra}    backends:\n{list}"
        ),
    )
}

#[tokio::test]
async fn fall_and_rise_counts_drive_health_status_metrics_and_events() {
    let flag = Arc::new(AtomicBool::new(true));
    let sick = switchable("sick", flag.clone()).await;
    let well = echo("well");
    let lb = Autolb::start(&checked_pool(&[sick, well.addr], ""));
    wait_for(&lb, 0, "passed a check", |b| b["check"]["ok"] == true).await;

    flag.store(false, Ordering::SeqCst);
    let b = wait_health(&lb, 0, "down").await;
    assert_eq!(b["check"]["detail"], "status 503");
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    let down = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == "down")
        .cloned()
        .expect("a down event");
    assert_eq!(down["backend"], sick.to_string());
    let detail = down["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("3 consecutive failed checks"),
        "{detail}"
    );
    let metrics = common::get(lb.admin, "/metrics").await.text();
    assert!(metrics.contains(&format!(
        "autolb_backend_up{{pool=\"web\",backend=\"{sick}\"}} 0"
    )));
    // While down, every request goes to the healthy backend.
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..20 {
        assert_eq!(c.get("/").await.text(), "well");
    }

    flag.store(true, Ordering::SeqCst);
    wait_health(&lb, 0, "up").await;
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    let up = &status["events"][0];
    assert_eq!(up["event"], "up", "newest event first: {up}");
    let detail = up["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("2 consecutive passed checks"),
        "{detail}"
    );
    assert!(lb.proc.log().contains("backend DOWN"));
    assert!(lb.proc.log().contains("backend UP"));
}

#[tokio::test]
async fn a_backend_added_by_reload_waits_for_its_first_passing_check() {
    let flag = Arc::new(AtomicBool::new(false));
    let newcomer = switchable("new", flag.clone()).await;
    let old = echo("old");
    let lb = Autolb::start(&checked_pool(&[old.addr], ""));
    wait_health(&lb, 0, "up").await;
    std::fs::write(&lb.config, checked_pool(&[old.addr, newcomer], "")).expect("write");
    unsafe { libc::kill(lb.proc.pid() as i32, libc::SIGHUP) };
    let b = wait_health(&lb, 1, "down").await;
    assert_eq!(b["address"], newcomer.to_string());
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..20 {
        assert_eq!(
            c.get("/").await.text(),
            "old",
            "never routed before its check passes"
        );
    }
    flag.store(true, Ordering::SeqCst);
    wait_health(&lb, 1, "up").await;
    let mut seen_new = false;
    for _ in 0..20 {
        seen_new |= c.get("/").await.text() == "new";
    }
    assert!(seen_new);
}

async fn share_of(c: &mut Client, name: &str, n: usize) -> f64 {
    let mut hits = 0;
    for _ in 0..n {
        if c.get("/").await.text() == name {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

#[tokio::test]
async fn slow_start_ramps_a_recovered_backend_up() {
    let flag = Arc::new(AtomicBool::new(false));
    let back = switchable("back", flag.clone()).await;
    let steady = echo("steady");
    let lb = Autolb::start(&checked_pool(
        &[back, steady.addr],
        "    balance: weighted_round_robin\n    slow_start: 4s\n",
    ));
    wait_health(&lb, 0, "down").await;
    flag.store(true, Ordering::SeqCst);
    let b = wait_health(&lb, 0, "up").await;
    assert!(b["slow_start_factor"].as_f64().is_some(), "{b}");
    let mut c = Client::connect(lb.addr("web")).await;
    let early = share_of(&mut c, "back", 200).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late = share_of(&mut c, "back", 200).await;
    assert!(early < 0.3, "early share {early}");
    assert!(late > 0.4, "late share {late}");
    assert!(backend_status(&lb, 0).await["slow_start_factor"].is_null());
}

#[tokio::test]
async fn panic_mode_spreads_over_unhealthy_backends_instead_of_overloading_the_rest() {
    let flag = Arc::new(AtomicBool::new(false));
    let flaky = switchable("flaky", flag).await;
    let fine = echo("fine");
    let lb = Autolb::start(&checked_pool(
        &[flaky, fine.addr],
        "    panic_threshold: 60\n",
    ));
    wait_health(&lb, 0, "down").await;
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    assert_eq!(status["pools"][0]["panic"], true);
    let mut c = Client::connect(lb.addr("web")).await;
    let mut flaky_hits = 0;
    for _ in 0..40 {
        if c.get("/").await.text() == "flaky" {
            flaky_hits += 1;
        }
    }
    assert!((10..=30).contains(&flaky_hits), "{flaky_hits} of 40");
}

#[tokio::test]
async fn no_usable_backend_answers_503_with_retry_after() {
    let flag = Arc::new(AtomicBool::new(false));
    let down = switchable("down", flag).await;
    let lb = Autolb::start(&checked_pool(&[down], ""));
    wait_health(&lb, 0, "down").await;
    let r = common::get(lb.addr("web"), "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json()["error"], "no backend available");
}
