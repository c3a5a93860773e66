//! `POST /backends/state` (HAProxy's `set server`) through the real autolb: a drained backend
//! takes no new requests while in-flight ones and sticky sessions finish on it; `maint`
//! takes nothing and pauses its checks; a weight change shifts the split at once; states
//! survive a reload while the backend remains; bad requests get 400/404/401.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{admin_post, backend_list, config, echo, set_cookie, wait_until, Autolb, Client};
use serde_json::Value;

const TOKEN: &str = "backend-state-token";

fn yaml(addrs: &[SocketAddr], balance: &str, extra: &str) -> String {
    config(
        2,
        "",
        &format!(
            "pools:
  web:
    balance: {balance}
{extra}    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    backends:
{}",
            backend_list(addrs, "")
        ),
    )
    .replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_env: T_ADMIN }",
    )
}

fn start(yaml: &str) -> Autolb {
    Autolb::start_with_env(
        yaml,
        &[
            ("T_ADMIN", TOKEN),
            ("AUTOLB_STICKY_SECRET", "backend-state-secret-0123456789"),
        ],
    )
}

async fn set(lb: &Autolb, body: String) -> common::Reply {
    admin_post(lb.admin, "/backends/state", Some(TOKEN), &[], &body).await
}

async fn set_ok(lb: &Autolb, backend: SocketAddr, state: &str, weight: Option<u32>) -> Value {
    let w = weight.map_or(String::new(), |w| format!(",\"weight\":{w}"));
    let r = set(
        lb,
        format!(r#"{{"pool":"web","backend":"{backend}","state":"{state}"{w}}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The backend of pool web with this address, as `/loadbalancer/status` shows it.
async fn status(lb: &Autolb, addr: SocketAddr) -> Value {
    let s = common::get(lb.admin, "/loadbalancer/status").await.json();
    s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .expect("the backend")
}

/// `n` sequential GETs of `/` on one connection: answers by backend name (all must be 200).
async fn split(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(addr).await;
    let mut by = HashMap::new();
    for _ in 0..n {
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        *by.entry(r.text()).or_insert(0) += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_gets_no_new_requests_while_in_flight_ones_finish() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = start(&yaml(&[a.addr, b.addr], "round_robin", ""));
    let web = lb.addr("web");
    let both = split(web, 20).await;
    assert_eq!((both["a"], both["b"]), (10, 10));

    // Two slow requests in flight at once: round robin puts one on each backend.
    let slow = || async move {
        let mut c = Client::connect(web).await;
        let r = c.get("/delay/1500").await;
        (r.status, r.text())
    };
    let (s1, s2) = (tokio::spawn(slow()), tokio::spawn(slow()));
    wait_until(10, "both slow requests in flight", || async {
        let (x, y) = (status(&lb, a.addr).await, status(&lb, b.addr).await);
        (x["active_requests"] == 1 && y["active_requests"] == 1).then_some(())
    })
    .await;

    // Load on four connections while a is drained in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, drained) = (stop.clone(), drained.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(web).await;
            let (mut before, mut after_on_a, mut after) = (0, 0, 0);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Sampled before sending: a request sent after the drain answered.
                let after_drain = drained.load(Ordering::Acquire);
                let r = c.get("/").await;
                assert_eq!(r.status, 200, "{}", r.text());
                if after_drain {
                    after += 1;
                    after_on_a += usize::from(r.text() == "a");
                } else {
                    before += 1;
                }
            }
            (before, after, after_on_a)
        }));
    }
    wait_until(10, "load running", || async {
        (status(&lb, a.addr).await["requests_total"].as_u64()? > 100).then_some(())
    })
    .await;
    let r = set_ok(&lb, a.addr, "drain", None).await;
    assert_eq!(r["state"], "drain");
    assert_eq!(r["health"], "up");
    drained.store(true, Ordering::Release);
    let a_total = status(&lb, a.addr).await["requests_total"].as_u64();
    wait_until(20, "requests after the drain", || async {
        (status(&lb, b.addr).await["requests_total"].as_u64()? > 2_000).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut after, mut after_on_a) = (0, 0);
    for l in load {
        let (_, n, on_a) = l.await.expect("load task");
        after += n;
        after_on_a += on_a;
    }
    assert!(after > 100, "{after} requests after the drain");
    assert_eq!(
        after_on_a, 0,
        "{after_on_a} of {after} new requests went to a"
    );

    // The in-flight requests finished where they were, a drained one included.
    let mut names = vec![s1.await.expect("slow 1"), s2.await.expect("slow 2")];
    names.sort();
    assert_eq!(names, vec![(200, "a".into()), (200, "b".into())]);
    let sa = status(&lb, a.addr).await;
    assert_eq!(sa["state"], "drain");
    assert_eq!(sa["usable"], false);
    // Since the drain answered, a finished only what was in flight then: the slow request
    // and at most one request of each of the four load connections.
    let finished = sa["requests_total"].as_u64().expect("total");
    assert!(finished <= a_total.expect("total") + 5, "{sa:#}");

    // ready: a takes its share again.
    set_ok(&lb, a.addr, "ready", None).await;
    let both = split(web, 20).await;
    assert_eq!((both["a"], both["b"]), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_shifts_the_split_at_once() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = start(&yaml(&[a.addr, b.addr], "weighted_round_robin", ""));
    let web = lb.addr("web");
    let even = split(web, 400).await;
    assert_eq!((even["a"], even["b"]), (200, 200));

    let r = set_ok(&lb, a.addr, "ready", Some(3)).await;
    assert_eq!(
        (r["weight"].as_u64(), r["config_weight"].as_u64()),
        (Some(3), Some(1))
    );
    // The smooth weighted order: every 4 picks are 3 a and 1 b.
    let shifted = split(web, 400).await;
    assert_eq!((shifted["a"], shifted["b"]), (300, 100));
    let sa = status(&lb, a.addr).await;
    assert_eq!(
        (sa["weight"].as_u64(), sa["config_weight"].as_u64()),
        (Some(3), Some(1))
    );

    // Setting the configured weight again ends the override.
    set_ok(&lb, a.addr, "ready", Some(1)).await;
    let back = split(web, 400).await;
    assert_eq!((back["a"], back["b"]), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_takes_nothing_not_even_sticky_sessions_and_pauses_checks() {
    let (a, b) = (echo("a"), echo("b"));
    let sticky = "    sticky: { cookie: {} }\n";
    let lb = start(&yaml(&[a.addr, b.addr], "round_robin", sticky));
    let web = lb.addr("web");
    // A session on a.
    let cookie = loop {
        let mut c = Client::connect(web).await;
        let r = c.get("/").await;
        let (pair, _) = set_cookie(&r.headers, "AUTOLB_SID").expect("sticky cookie");
        if r.text() == "a" {
            break pair;
        }
    };
    let pinned = || {
        let cookie = cookie.clone();
        async move {
            let mut c = Client::connect(web).await;
            let r = c.get_with("/", &[("cookie", &cookie)]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        }
    };

    // drain: the session stays on a, new clients go to b.
    set_ok(&lb, a.addr, "drain", None).await;
    assert_eq!(pinned().await, "a");
    assert_eq!(split(web, 10).await.get("a"), None);

    // maint: nothing reaches a, not even its session; its checks stop.
    let r = set_ok(&lb, a.addr, "maint", None).await;
    assert_eq!(r["health"], "maint");
    assert_eq!(pinned().await, "b");
    assert_eq!(split(web, 10).await.get("a"), None);
    let checked_at = |v: &Value| v["check"]["at_ms"].as_u64().unwrap_or(0);
    // Once b has been checked again, a's check task is certainly gone.
    let b_at = checked_at(&status(&lb, b.addr).await);
    let b_at = wait_until(10, "b checked", || async {
        let now = checked_at(&status(&lb, b.addr).await);
        (now > b_at).then_some(now)
    })
    .await;
    let paused_at = checked_at(&status(&lb, a.addr).await);
    // b is checked several more times (every 100 ms) while a is not checked at all.
    wait_until(10, "b checked again", || async {
        (checked_at(&status(&lb, b.addr).await) > b_at + 500).then_some(())
    })
    .await;
    let sa = status(&lb, a.addr).await;
    assert_eq!(checked_at(&sa), paused_at, "{sa:#}");
    assert_eq!(
        (sa["state"].as_str(), sa["health"].as_str()),
        (Some("maint"), Some("maint"))
    );

    // ready: a is checked at once and takes its share (its session too) after one pass.
    set_ok(&lb, a.addr, "ready", None).await;
    wait_until(10, "a back in service", || async {
        let s = status(&lb, a.addr).await;
        (s["usable"] == true && checked_at(&s) > paused_at).then_some(())
    })
    .await;
    assert_eq!(pinned().await, "a");
    let both = split(web, 10).await;
    assert!(both.contains_key("a") && both.contains_key("b"), "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_survive_a_reload_while_the_backend_remains() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let lb = start(&yaml(&[a.addr, b.addr], "weighted_round_robin", ""));
    set_ok(&lb, a.addr, "drain", Some(4)).await;
    set_ok(&lb, b.addr, "ready", Some(2)).await;

    // A reload that adds c keeps a drained at weight 4 and b at weight 2.
    let reload = |text: String| {
        let lb = &lb;
        async move {
            std::fs::write(&lb.config, text).expect("write config");
            let r = admin_post(lb.admin, "/config/reload", Some(TOKEN), &[], "").await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    reload(yaml(&[a.addr, b.addr, c.addr], "weighted_round_robin", "")).await;
    let sa = status(&lb, a.addr).await;
    assert_eq!(
        (sa["state"].as_str(), sa["weight"].as_u64()),
        (Some("drain"), Some(4))
    );
    assert_eq!(status(&lb, b.addr).await["weight"], 2);
    wait_until(10, "c checked and up", || async {
        (status(&lb, c.addr).await["usable"] == true).then_some(())
    })
    .await;
    let split3 = split(lb.addr("web"), 300).await;
    assert_eq!(split3.get("a"), None, "{split3:?}");
    assert!(split3["b"] > split3["c"] && split3["c"] > 0, "{split3:?}");

    // A reload that changes b's configured weight ends b's weight override (the newer
    // word); a reload without a forgets a, and a returning a starts ready.
    let text = yaml(&[a.addr, b.addr, c.addr], "weighted_round_robin", "").replacen(
        &format!("\"{}\" }}", b.addr),
        &format!("\"{}\", weight: 3 }}", b.addr),
        1,
    );
    reload(text).await;
    let sb = status(&lb, b.addr).await;
    assert_eq!(
        (sb["weight"].as_u64(), sb["config_weight"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(status(&lb, a.addr).await["state"], "drain");
    reload(yaml(&[b.addr, c.addr], "weighted_round_robin", "")).await;
    reload(yaml(&[a.addr, b.addr, c.addr], "weighted_round_robin", "")).await;
    let sa = status(&lb, a.addr).await;
    assert_eq!(
        (sa["state"].as_str(), sa["weight"].as_u64()),
        (Some("ready"), Some(1))
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = start(&yaml(&[a.addr, b.addr], "round_robin", ""));
    let cases = [
        (
            format!(r#"{{"pool":"api","backend":"{}","state":"drain"}}"#, a.addr),
            404,
            "no pool \"api\"",
        ),
        (
            r#"{"pool":"web","backend":"127.0.0.1:1","state":"drain"}"#.into(),
            404,
            "its backends: ",
        ),
        (
            format!(r#"{{"pool":"web","backend":"{}","state":"down"}}"#, a.addr),
            400,
            "\"state\" must be",
        ),
        (
            format!(
                r#"{{"pool":"web","backend":"{}","state":"ready","weight":0}}"#,
                a.addr
            ),
            400,
            "between 1 and 256",
        ),
        (
            format!(
                r#"{{"pool":"web","backend":"{}","state":"ready","weight":"2"}}"#,
                a.addr
            ),
            400,
            "integer",
        ),
        (
            format!(
                r#"{{"pool":"web","backend":"{}","state":"drain","wieght":2}}"#,
                a.addr
            ),
            400,
            "unknown field \"wieght\"",
        ),
        (
            format!(r#"{{"backend":"{}","state":"drain"}}"#, a.addr),
            400,
            "\"pool\"",
        ),
        ("[1]".into(), 400, "JSON object"),
    ];
    for (body, code, needle) in &cases {
        let r = set(&lb, body.clone()).await;
        assert_eq!(r.status, *code, "{body}: {}", r.text());
        let e = r.json()["error"].as_str().expect("error").to_string();
        assert!(e.contains(needle), "{body}: {e}");
    }
    // Without the token: 401.
    let body = format!(r#"{{"pool":"web","backend":"{}","state":"maint"}}"#, a.addr);
    let r = admin_post(lb.admin, "/backends/state", None, &[], &body).await;
    assert_eq!(r.status, 401);
    let r = admin_post(lb.admin, "/backends/state", Some("wrong"), &[], &body).await;
    assert_eq!(r.status, 401);
    for addr in [a.addr, b.addr] {
        let s = status(&lb, addr).await;
        assert_eq!(
            (s["state"].as_str(), s["weight"].as_u64()),
            (Some("ready"), Some(1))
        );
    }
    let h = common::get(lb.admin, "/health").await.json();
    assert_eq!(h["updates"]["backend_states"], 0, "{h:#}");
}
