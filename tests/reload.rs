//! Hot reload through the real program: under continuous load, 50 config rewrites lose no
//! request and traffic follows each one; an invalid file changes nothing.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{echo, Autolb, Client, Echo};

const TOKEN: &str = "reload-token";

fn config(i: usize, e: &[Echo]) -> String {
    // Cycle through backend sets, algorithms, weights and routes.
    let (set, balance): (&[usize], &str) = match i % 4 {
        0 => (&[0, 1], "round_robin"),
        1 => (&[1, 2], "least_conn"),
        2 => (&[0, 2], "weighted_round_robin"),
        _ => (&[0, 1, 2], "p2c"),
    };
    let backends: String = set
        .iter()
        .map(|&k| {
            format!(
                "      - {{ address: \"{}\", weight: {} }}\n",
                e[k].addr,
                1 + i % 3
            )
        })
        .collect();
    let routes = if i.is_multiple_of(2) {
        "routes:\n  - { path_prefix: /api, pool: api }\n".to_string()
    } else {
        String::new()
    };
    format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\", token_env: RELOAD_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
{routes}pools:
  web:
    balance: {balance}
    backends:
{backends}  api:
    backends: [ {{ address: \"{}\" }} ]
",
        e[3].addr
    )
}

fn expected(i: usize, e: &[Echo]) -> HashSet<String> {
    let set: &[usize] = match i % 4 {
        0 => &[0, 1],
        1 => &[1, 2],
        2 => &[0, 2],
        _ => &[0, 1, 2],
    };
    set.iter().map(|&k| e[k].name.clone()).collect()
}

/// Traffic follows config `i`: no answer from a backend outside it, and for the
/// round-robin configs every backend of it answers (load-aware algorithms may prefer some
/// backends while the load workers keep others busy).
fn follows(i: usize, got: &HashSet<String>, want: &HashSet<String>) -> bool {
    let inside = !got.is_empty() && got.is_subset(want);
    if i.is_multiple_of(2) {
        inside && got == want
    } else {
        inside
    }
}

async fn post_reload(admin: SocketAddr) -> common::Reply {
    let mut c = Client::connect(admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    c.request(req).await
}

/// Write the config atomically (as editors and config managers do).
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Names answering `/` on a fresh connection, over `n` requests.
async fn answering(addr: SocketAddr, n: usize) -> HashSet<String> {
    let mut c = Client::connect(addr).await;
    let mut names = HashSet::new();
    for _ in 0..n {
        names.insert(c.get("/").await.text());
    }
    names
}

#[tokio::test]
async fn fifty_reloads_under_load_lose_nothing_and_traffic_follows() {
    let e: Vec<Echo> = ["r0", "r1", "r2", "api"].iter().map(|n| echo(n)).collect();
    let lb = Autolb::start_with_env(&config(0, &e), &[("RELOAD_TOKEN", TOKEN)]);
    let addr = lb.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (stop, failures) = (stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut done = 0u32;
            // Bounded: 20000 requests per worker at most.
            while !stop.load(Ordering::Relaxed) && done < 20_000 {
                // Half of the workers open a new connection for every request.
                if w % 2 == 1 {
                    c = Client::connect(addr).await;
                }
                let path = if done.is_multiple_of(5) { "/api" } else { "/" };
                let r = c.get(path).await;
                if r.status != 200 && !(path == "/api" && r.status == 404) {
                    failures.lock().expect("lock").push(format!(
                        "{path}: {} {}",
                        r.status,
                        r.text()
                    ));
                }
                done += 1;
            }
            done
        }));
    }
    for i in 1..=50 {
        write(&lb.config, &config(i, &e));
        let want = expected(i, &e);
        if i % 10 == 0 {
            // The file watcher picks it up: traffic follows within a second (2 s margin).
            common::wait_until(
                3,
                &format!("reload {i} picked up from the file"),
                || async { follows(i, &answering(addr, 40).await, &want).then_some(()) },
            )
            .await;
        } else {
            let r = post_reload(lb.admin).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let got = answering(addr, 40).await;
            assert!(
                follows(i, &got, &want),
                "reload {i}: traffic follows the new config at once: {got:?} vs {want:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let health = common::get(lb.admin, "/health").await.json();
    assert_eq!(health["config"]["last_reload"]["result"], "success");
    let metrics = common::get(lb.admin, "/metrics").await.text();
    let ok_line = metrics
        .lines()
        .find(|l| l.starts_with("autolb_config_reloads_total{result=\"success\"}"))
        .expect("metric");
    let ok: u64 = ok_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("count");
    assert!(ok >= 50, "{ok_line}");
}

#[tokio::test]
async fn an_invalid_config_changes_nothing_and_says_where() {
    let e: Vec<Echo> = ["v0", "v1", "v2", "vapi"].iter().map(|n| echo(n)).collect();
    let lb = Autolb::start_with_env(&config(0, &e), &[("RELOAD_TOKEN", TOKEN)]);
    let before = common::get(lb.admin, "/health").await.json();
    let broken = config(1, &e).replace("balance: least_conn", "balance: least_con");
    write(&lb.config, &broken);
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    let errors = j["errors"].as_array().expect("errors");
    let first = errors[0].as_str().expect("error text");
    let file = lb.config.display().to_string();
    assert!(first.starts_with(&format!("{file}:7:14: ")), "{first}");
    assert!(first.contains("least_con"), "{first}");
    // Still serving the old config.
    assert_eq!(answering(lb.addr("web"), 40).await, expected(0, &e));
    let after = common::get(lb.admin, "/health").await.json();
    assert_eq!(
        after["config"]["generation"],
        before["config"]["generation"]
    );
    assert_eq!(after["config"]["hash"], before["config"]["hash"]);
    assert_eq!(after["config"]["last_reload"]["result"], "failure");
    assert!(lb.proc.log().contains("reload refused"));
    // Without the token: 401, nothing runs.
    let mut c = Client::connect(lb.admin).await;
    let r = c
        .request(
            http::Request::post("/config/reload")
                .header("content-type", "application/json")
                .header("host", "admin")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, 401);
    // Fixed: the diff names what changed.
    write(&lb.config, &config(1, &e));
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let changes: Vec<String> = r.json()["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        changes
            .iter()
            .any(|c| c == "pool web: balance round_robin -> least_conn"),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c.contains("removed (drains)")),
        "{changes:?}"
    );
}

/// The address a listener reported in the log, waiting up to 10 s.
async fn logged_addr(lb: &Autolb, name: &str) -> SocketAddr {
    let needle = format!("listening listener={name} addr=");
    common::wait_until_or(
        10,
        || {
            let log = lb.proc.log();
            let line = log.lines().rev().find(|l| l.contains(&needle));
            let addr = line
                .and_then(|l| l.split(&needle).nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            std::future::ready(addr)
        },
        || format!("listener {name} never listened:\n{}", lb.proc.log()),
    )
    .await
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_a_restart() {
    let e = echo("l0");
    let list = common::backend_list(&[e.addr], "");
    let pools = format!("pools:\n  web:\n    backends:\n{list}");
    let base = common::config(1, "", &pools).replace("token_env: RELOAD_TOKEN", "");
    let lb = Autolb::start_with_env(
        &base.replace(
            "admin: { listen: \"127.0.0.1:0\" }",
            "admin: { listen: \"127.0.0.1:0\", token_env: RELOAD_TOKEN }",
        ),
        &[("RELOAD_TOKEN", TOKEN)],
    );
    let with_alt = base
        .replace(
            "listeners:\n",
            "listeners:\n  - { name: alt, listen: \"127.0.0.1:0\", protocol: http, pool: web }\n",
        )
        .replace(
            "admin: { listen: \"127.0.0.1:0\" }",
            "admin: { listen: \"127.0.0.1:0\", token_env: RELOAD_TOKEN }",
        );
    write(&lb.config, &with_alt);
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("listener alt now serves"), "{}", r.text());
    let alt = logged_addr(&lb, "alt").await;
    let mut kept = Client::connect(alt).await;
    assert_eq!(kept.get("/").await.text(), "l0");

    write(
        &lb.config,
        &base.replace(
            "admin: { listen: \"127.0.0.1:0\" }",
            "admin: { listen: \"127.0.0.1:0\", token_env: RELOAD_TOKEN }",
        ),
    );
    let r = post_reload(lb.admin).await;
    assert!(r.text().contains("listener alt stopped"), "{}", r.text());
    // New connections are refused; the open one keeps working; the other listener serves.
    common::wait_until(5, "alt to refuse connections", || async {
        tokio::net::TcpStream::connect(alt)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert_eq!(kept.get("/").await.text(), "l0");
    assert_eq!(answering(lb.addr("web"), 3).await.len(), 1);
}

#[tokio::test]
async fn open_websockets_survive_reloads_even_when_their_backend_is_removed() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let e: Vec<Echo> = ["w0", "w1", "w2", "wapi"].iter().map(|n| echo(n)).collect();
    let lb = Autolb::start_with_env(&config(0, &e), &[("RELOAD_TOKEN", TOKEN)]);
    // Config 0 balances over w0 and w1: open one WebSocket to each.
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = common::ws_connect(lb.addr("web"), "/ws", &[]).await;
        let name = common::ws_text(&mut ws).await;
        sockets.push((name, ws));
    }
    // Reload to configs that change weights and algorithms and drop w0 (config 1: w1, w2).
    for i in 1..=3 {
        write(&lb.config, &config(i, &e));
        let r = post_reload(lb.admin).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (name, ws) in sockets.iter_mut() {
        let text = format!("still here after the reloads ({name})");
        ws.send(Message::Text(text.clone().into()))
            .await
            .expect("send");
        match common::ws_next(ws, 10).await {
            Some(Message::Text(t)) => assert_eq!(t.as_str(), text, "{name}"),
            other => panic!("{name}: the WebSocket did not survive the reloads: {other:?}"),
        }
    }
}

/// A reload whose new or moved listener cannot bind (its port is taken) is refused whole:
/// a non-2xx answer naming the listener and the port, counted as a failure, and the
/// running listener goes on serving where it was.
#[tokio::test]
async fn a_listener_that_cannot_bind_refuses_the_reload() {
    let e = echo("b0");
    let list = common::backend_list(&[e.addr], "");
    let pools = format!("pools:\n  web:\n    backends:\n{list}");
    let base = common::config(1, "", &pools).replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_env: RELOAD_TOKEN }",
    );
    let lb = Autolb::start_with_env(&base, &[("RELOAD_TOKEN", TOKEN)]);
    let web = lb.addr("web");
    // Another program holds this port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let failures = || async {
        common::tls::metric(&lb, "autolb_config_reloads_total{result=\"failure\"}").await
    };
    let before = failures().await;

    // A new listener on the taken port.
    let added = base.replace(
        "listeners:\n",
        &format!(
            "listeners:\n  - {{ name: extra, listen: \"127.0.0.1:{port}\", protocol: http, pool: web }}\n"
        ),
    );
    write(&lb.config, &added);
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("extra") && text.contains(&port.to_string()),
        "{text}"
    );
    // (The file watcher may have tried the same reload too.)
    let after_first = failures().await;
    assert!(after_first > before, "{after_first}");
    let health = common::get(lb.admin, "/health").await.json();
    assert_eq!(health["config"]["last_reload"]["result"], "failure");

    // The running listener moved onto the taken port: refused, it stays where it was.
    let moved = base.replace(
        "{ name: web, listen: \"127.0.0.1:0\"",
        &format!("{{ name: web, listen: \"127.0.0.1:{port}\""),
    );
    write(&lb.config, &moved);
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("web"), "{}", r.text());
    assert!(failures().await > after_first);
    assert_eq!(common::get(web, "/").await.text(), "b0");
    // The taken port is still only the other program's.
    drop(taken);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());

    // Once the port is free, the same reload applies.
    write(&lb.config, &added);
    let r = post_reload(lb.admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let extra = logged_addr(&lb, "extra").await;
    assert_eq!(extra.port(), port);
    assert_eq!(common::get(extra, "/").await.text(), "b0");
}
