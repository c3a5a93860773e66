//! Sticky sessions end to end: signed cookies (pinning, forgery, redispatch, several nodes),
//! hashed source-IP and header affinity, and draining that respects sessions (WebSockets
//! closed with 1001 after `drain_timeout`), with real `autolb` and `autolb-echo` processes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use common::{
    backend_list, config, echo, set_cookie, ws_connect, ws_next, ws_text, Autolb, Client, Echo,
};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SID: &str = "AUTOLB_SID";

fn pool(addrs: &[SocketAddr], balance: &str, sticky: &str, listener_extra: &str) -> String {
    config(
        2,
        listener_extra,
        &format!(
            "pools:\n  web:\n    balance: {balance}\n    sticky: {sticky}\n    \
             health_check: {{ type: http, path: /health, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n    \
             backends:\n{}",
            backend_list(addrs, "")
        ),
    )
}

fn echoes(names: &[&str]) -> (Vec<Echo>, Vec<SocketAddr>) {
    let e: Vec<Echo> = names.iter().map(|n| echo(n)).collect();
    let addrs = e.iter().map(|e| e.addr).collect();
    (e, addrs)
}

fn start(yaml: &str) -> Autolb {
    Autolb::start_with_env(
        yaml,
        &[("AUTOLB_STICKY_SECRET", "sticky-test-secret-0123456789")],
    )
}

/// GET `/` with `cookie` (if any): (backend name, the new `AUTOLB_SID=...` pair if one was set).
async fn hit(c: &mut Client, cookie: Option<&str>) -> (String, Option<String>) {
    let headers: Vec<(&str, &str)> = cookie.map(|v| ("cookie", v)).into_iter().collect();
    let r = c.get_with("/", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (r.text(), set_cookie(&r.headers, SID).map(|(pair, _)| pair))
}

/// A fresh client's first answer: (backend name, its cookie pair).
async fn session(addr: SocketAddr) -> (String, String) {
    let mut c = Client::connect(addr).await;
    let (name, cookie) = hit(&mut c, None).await;
    (
        name,
        cookie.expect("the first response sets the sticky cookie"),
    )
}

#[tokio::test]
async fn a_cookie_pins_requests_and_websockets_to_one_backend() {
    let (_e, addrs) = echoes(&["s-1", "s-2", "s-3"]);
    let lb = start(&pool(&addrs, "round_robin", "{ cookie: { ttl: 2h } }", ""));
    let addr = lb.addr("web");
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let mut c = Client::connect(addr).await;
        let r = c.get("/").await;
        let (pair, full) = set_cookie(&r.headers, SID).expect("Set-Cookie");
        assert_eq!(
            full.strip_prefix(&pair).expect("attributes"),
            "; Path=/; Max-Age=7200; HttpOnly; SameSite=Lax",
            "no Secure on http"
        );
        let first = r.text();
        seen.insert(first.clone());
        // 100 requests with the cookie: one backend, no new cookie.
        for _ in 0..100 {
            let (name, again) = hit(&mut c, Some(&pair)).await;
            assert_eq!(name, first);
            assert_eq!(again, None);
        }
        // The backend never sees the sticky cookie, only the others.
        let jar = format!("a=1; {pair}; b=2");
        let echoed = c.get_with("/echo", &[("cookie", &jar)]).await.json();
        assert_eq!(echoed["headers"]["cookie"], "a=1; b=2", "{echoed}");
        // A WebSocket upgrade with the cookie lands on the same backend.
        let (mut ws, resp) = ws_connect(addr, "/ws", &[("cookie", &pair)]).await;
        assert!(set_cookie(resp.headers(), SID).is_none());
        assert_eq!(ws_text(&mut ws).await, first);
    }
    // Round robin gave the three sessions three backends.
    assert_eq!(seen.len(), 3, "{seen:?}");
    let st = common::get(lb.admin, "/loadbalancer/status").await.json();
    assert_eq!(st["pools"][0]["affinity"], "cookie:AUTOLB_SID");
}

#[tokio::test]
async fn forged_or_garbled_cookies_are_ignored_and_balanced_anew() {
    let (_e, addrs) = echoes(&["f-1", "f-2", "f-3"]);
    let lb = start(&pool(&addrs, "round_robin", "{}", ""));
    let addr = lb.addr("web");
    let (_, good) = session(addr).await;
    let value = good.strip_prefix("AUTOLB_SID=").expect("value");
    // Another backend id with the old tag, a later issue time, a flipped tag, garbage.
    let mut flipped = value.to_string().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let forged = [
        format!("0123456789abcdef{}", &value[16..]),
        value.replacen('.', ".f", 1),
        flipped,
        "garbage".into(),
        String::new(),
        "a.b.c".into(),
    ];
    for bad in forged {
        let cookie = format!("{SID}={bad}");
        let mut c = Client::connect(addr).await;
        let mut names = BTreeSet::new();
        for _ in 0..6 {
            let (name, new) = hit(&mut c, Some(&cookie)).await;
            assert!(new.is_some(), "{bad:?}: a new cookie replaces it");
            names.insert(name);
        }
        assert!(names.len() > 1, "{bad:?} pinned to {names:?}");
    }
    // A cookie signed with another secret (another autolb's) is refused too.
    let other = Autolb::start_with_env(
        &pool(&addrs, "round_robin", "{}", ""),
        &[("AUTOLB_STICKY_SECRET", "a-different-secret-0123456789")],
    );
    let (_, foreign) = session(other.addr("web")).await;
    let mut c = Client::connect(addr).await;
    let (_, new) = hit(&mut c, Some(&foreign)).await;
    assert!(new.is_some(), "a foreign cookie is replaced");
}

#[tokio::test]
async fn nodes_sharing_the_secret_honour_each_others_cookies() {
    let (_e, addrs) = echoes(&["n-1", "n-2", "n-3"]);
    let yaml = pool(&addrs, "random", "{}", "");
    let (a, b) = (start(&yaml), start(&yaml));
    for _ in 0..5 {
        let (name, cookie) = session(a.addr("web")).await;
        let mut c = Client::connect(b.addr("web")).await;
        for _ in 0..10 {
            assert_eq!(hit(&mut c, Some(&cookie)).await, (name.clone(), None));
        }
    }
}

#[tokio::test]
async fn a_killed_sticky_backend_gets_a_new_backend_and_a_new_cookie() {
    let (mut e, addrs) = echoes(&["k-1", "k-2", "k-3"]);
    let lb = start(&pool(
        &addrs,
        "least_conn",
        "{ cookie: { name: SESSION } }",
        "",
    ));
    let addr = lb.addr("web");
    let mut c = Client::connect(addr).await;
    let r = c.get("/").await;
    let (cookie, _) = set_cookie(&r.headers, "SESSION").expect("SESSION cookie");
    let first = r.text();
    let idx = e
        .iter()
        .position(|x| x.name == first)
        .expect("known backend");
    drop(e.remove(idx));
    // At once (before any health check notices): retried elsewhere, with a new cookie.
    let mut c = Client::connect(addr).await;
    let r = c.get_with("/", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.text();
    assert_ne!(second, first);
    let (fresh, _) = set_cookie(&r.headers, "SESSION").expect("a new cookie");
    assert_ne!(fresh, cookie);
    // The new cookie sticks; once the dead backend is down, the old one is redispatched too.
    for _ in 0..20 {
        let r = c.get_with("/", &[("cookie", &fresh)]).await;
        assert_eq!(r.text(), second);
        assert!(set_cookie(&r.headers, "SESSION").is_none());
    }
    common::wait_until(10, "the killed backend to be down", || async {
        let st = common::get(lb.admin, "/loadbalancer/status").await.json();
        let down = st["pools"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["health"] == "down"));
        down.then_some(())
    })
    .await;
    let r = c.get_with("/", &[("cookie", &cookie)]).await;
    assert_ne!(r.text(), first);
    assert!(set_cookie(&r.headers, "SESSION").is_some());
}

#[tokio::test]
async fn cookie_attributes_follow_the_config_and_https() {
    let (_e, addrs) = echoes(&["a-1"]);
    let sticky = "{ cookie: { name: SID, ttl: 10m, path: /app, same_site: strict } }";
    // Requests from a trusted proxy that terminated TLS count as https.
    let lb = start(&pool(
        &addrs,
        "round_robin",
        sticky,
        ", trusted_proxies: [127.0.0.1]",
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    let r = c.get_with("/", &[("x-forwarded-proto", "https")]).await;
    let (pair, full) = set_cookie(&r.headers, "SID").expect("cookie");
    assert_eq!(
        &full[pair.len()..],
        "; Path=/app; Max-Age=600; HttpOnly; SameSite=Strict; Secure"
    );
    let r = c.get("/").await;
    let (pair, full) = set_cookie(&r.headers, "SID").expect("cookie");
    assert_eq!(
        &full[pair.len()..],
        "; Path=/app; Max-Age=600; HttpOnly; SameSite=Strict"
    );
}

#[tokio::test]
async fn source_ip_and_header_affinity_agree_across_nodes() {
    let (_e, addrs) = echoes(&["h-1", "h-2", "h-3", "h-4"]);
    // Source IP: every request from 127.0.0.1 lands on one backend, without a cookie.
    let lb = start(&pool(&addrs, "least_conn", "{ source_ip: true }", ""));
    let mut c = Client::connect(lb.addr("web")).await;
    let (home, cookie) = hit(&mut c, None).await;
    assert_eq!(cookie, None);
    for _ in 0..30 {
        assert_eq!(
            hit(&mut Client::connect(lb.addr("web")).await, None)
                .await
                .0,
            home
        );
    }
    let (mut ws, _) = ws_connect(lb.addr("web"), "/ws", &[]).await;
    assert_eq!(ws_text(&mut ws).await, home);

    // Header: each user keeps its backend, users spread, and two nodes agree.
    let yaml = pool(&addrs, "round_robin", "{ header: X-User }", "");
    let (a, b) = (start(&yaml), start(&yaml));
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for node in [&a, &b] {
        let mut c = Client::connect(node.addr("web")).await;
        for u in 0..40 {
            let user = format!("user-{u}");
            for _ in 0..3 {
                let r = c.get_with("/", &[("x-user", &user)]).await;
                let name = r.text();
                assert_eq!(
                    owner.entry(user.clone()).or_insert(name.clone()),
                    &name,
                    "{user}"
                );
            }
        }
    }
    let used: BTreeSet<&String> = owner.values().collect();
    assert!(used.len() >= 3, "40 users on {used:?}");
    // Without the header: the pool's algorithm (round robin) decides.
    let mut c = Client::connect(a.addr("web")).await;
    let mut names = BTreeSet::new();
    for _ in 0..8 {
        names.insert(c.get("/").await.text());
    }
    assert_eq!(names.len(), 4);
    let st = common::get(a.admin, "/loadbalancer/status").await.json();
    assert_eq!(st["pools"][0]["affinity"], "header:x-user");
}

const TOKEN: &str = "sticky-admin-token";

#[tokio::test]
async fn draining_keeps_pinned_sessions_then_closes_websockets_with_1001() {
    let base = 20_000 + (std::process::id() % 100) as u16 * 50;
    let yaml = format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\", token_env: AUTOLB_TEST_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    balance: round_robin
    sticky: {{ cookie: {{}} }}
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {base}-{hi}
      min: 1
      max: 2
      interval: 200ms
      target: {{ inflight_per_instance: 1000 }}
      scale_down: {{ stabilization: 1h }}
      drain_timeout: 6s
",
        echo = common::ECHO,
        hi = base + 49,
    );
    let lb = Autolb::start_with_env(
        &yaml,
        &[
            ("AUTOLB_TEST_TOKEN", TOKEN),
            ("AUTOLB_STICKY_SECRET", "drain-secret-0123456789"),
        ],
    );
    let addr = lb.addr("web");
    common::scale_to(&lb, TOKEN, 2).await;
    common::wait_until(30, "two ready instances", || async {
        let ready = common::instances(&lb)
            .await
            .iter()
            .filter(|i| i["state"] == "ready")
            .count();
        (ready == 2).then_some(())
    })
    .await;
    // A session (cookie) and a WebSocket on each instance.
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..20 {
        let (name, cookie) = session(addr).await;
        cookies.entry(name).or_insert(cookie);
        if cookies.len() == 2 {
            break;
        }
    }
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let mut sockets = BTreeMap::new();
    for (name, cookie) in &cookies {
        let (mut ws, _) = ws_connect(addr, "/ws", &[("cookie", cookie)]).await;
        assert_eq!(&ws_text(&mut ws).await, name);
        sockets.insert(name.clone(), ws);
    }

    common::scale_to(&lb, TOKEN, 1).await;
    let drained = common::wait_until(10, "an instance to drain", || async {
        common::instances(&lb)
            .await
            .into_iter()
            .find(|i| i["state"] == "draining")
            .and_then(|i| i["id"].as_str().map(String::from))
    })
    .await;
    let kept = cookies
        .keys()
        .find(|n| **n != drained)
        .expect("the other")
        .clone();
    // While draining: pinned requests and WebSockets keep working there ...
    let mut c = Client::connect(addr).await;
    for _ in 0..10 {
        assert_eq!(
            hit(&mut c, Some(&cookies[&drained])).await,
            (drained.clone(), None)
        );
    }
    let (mut late, _) = ws_connect(addr, "/ws", &[("cookie", &cookies[&drained])]).await;
    assert_eq!(ws_text(&mut late).await, drained);
    // ... and it takes no new session.
    for _ in 0..10 {
        assert_eq!(session(addr).await.0, kept);
    }
    let ws = sockets.get_mut(&drained).expect("ws");
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(ws_next(ws, 5).await, Some(Message::text("still here")));

    // After drain_timeout: its WebSockets close with 1001; the other instance's stay open.
    for ws in [sockets.get_mut(&drained).expect("ws"), &mut late] {
        match ws_next(ws, 15).await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    }
    let ws = sockets.get_mut(&kept).expect("ws");
    ws.send(Message::text("unaffected")).await.expect("send");
    assert_eq!(ws_next(ws, 5).await, Some(Message::text("unaffected")));
    // The drained instance's cookie is redispatched, with a new cookie.
    let (name, new) = common::wait_until(10, "the drained instance to be gone", || async {
        let r = hit(&mut Client::connect(addr).await, Some(&cookies[&drained])).await;
        (r.0 != drained).then_some(r)
    })
    .await;
    assert_eq!(name, kept);
    assert!(new.is_some());
}
