//! Per-route `rate_limit: {per_ip, burst}` through the real autolb: the limited route answers
//! 429 + Retry-After once its bucket is empty while other routes and pools go on; the bucket
//! survives reloads that keep the route and its setting (also when routes are added before
//! it) and starts afresh when the setting changes; a listener limit applies first.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{backend_list, config, Autolb, Client};
use http_body_util::Full;

/// A backend answering every request with `name`.
async fn named(name: &'static str) -> SocketAddr {
    common::hyper_backend(
        move |_req| async move { http::Response::new(Full::new(Bytes::from(name))) },
    )
    .await
}

fn yaml(listener_extra: &str, routes: &str, web: SocketAddr, api: SocketAddr) -> String {
    config(
        2,
        listener_extra,
        &format!(
            "routes:\n{routes}pools:\n  web:\n    backends:\n{}  api:\n    backends:\n{}",
            backend_list(&[web], ""),
            backend_list(&[api], "")
        ),
    )
}

const LOGIN: &str =
    "  - { path_prefix: /login, pool: api, rate_limit: { per_ip: 1/m, burst: 3 } }\n";
const OTHER: &str = "  - { path_prefix: /other, pool: api }\n";

async fn reload(lb: &Autolb, text: &str) {
    let tmp = lb.config.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &lb.config).expect("rename");
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = Client::connect(lb.admin).await.request(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn retry_after(r: &common::Reply) -> u64 {
    r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_limit_refuses_only_its_route_and_survives_reloads() {
    let (web, api) = (named("web").await, named("api").await);
    let lb = Autolb::start(&yaml("", &format!("{LOGIN}{OTHER}"), web, api));
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get("/login").await;
        assert_eq!((r.status, r.text()), (200, "api".to_string()));
    }
    let r = c.get("/login").await;
    assert_eq!(r.status, 429);
    assert!((1..=60).contains(&retry_after(&r)));
    assert_eq!(r.json()["error"], "rate limit exceeded");
    assert_eq!(r.json()["pool"], "api");
    // Another route to the same pool, and the listener's pool, are not limited.
    for _ in 0..5 {
        assert_eq!(c.get("/other").await.text(), "api");
        assert_eq!(c.get("/").await.text(), "web");
    }

    // A reload that keeps the route and its setting keeps its bucket, even with a new route
    // in front of it (a new position).
    let new = "  - { path_prefix: /new, pool: web }\n";
    reload(&lb, &yaml("", &format!("{new}{LOGIN}{OTHER}"), web, api)).await;
    assert_eq!(c.get("/new").await.text(), "web", "the reload is live");
    assert_eq!(c.get("/login").await.status, 429, "the bucket survived");

    // A changed setting starts afresh.
    let changed = LOGIN.replace("burst: 3", "burst: 2");
    reload(&lb, &yaml("", &format!("{new}{changed}{OTHER}"), web, api)).await;
    for _ in 0..2 {
        assert_eq!(c.get("/login").await.status, 200);
    }
    assert_eq!(c.get("/login").await.status, 429);
    assert_eq!(c.get("/other").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_limit_applies_first_then_the_route_limit() {
    let (web, api) = (named("web").await, named("api").await);
    let lb = Autolb::start(&yaml(
        ", rate_limit: { per_ip: 1/m, burst: 5 }",
        LOGIN,
        web,
        api,
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        assert_eq!(c.get("/login").await.status, 200);
    }
    // The route refuses the 4th (it took the listener's 4th token) ...
    let r = c.get("/login").await;
    assert_eq!((r.status, r.json()["pool"].clone()), (429, "api".into()));
    // ... the listener has one token left for the rest, then refuses everything.
    assert_eq!(c.get("/").await.status, 200);
    let r = c.get("/").await;
    assert_eq!(r.status, 429);
    assert!(
        r.json().get("pool").is_none(),
        "the listener's 429 names no pool"
    );
    assert_eq!(c.get("/login").await.status, 429);
}
