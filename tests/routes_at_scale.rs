//! Many routes and many backends through the real program: with 10,000 host+path routes the
//! first, a middle, the last and no route send each request where a scan in file order
//! would (the first declared match wins, wildcard hosts included), and a reload to 10,000
//! other routes plus a pool of 5,000 backends is applied while requests keep flowing, none
//! of them failing, and those backends cost little memory.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{admin_post, echo, wait_until, Autolb, Client};

const ROUTES: usize = 10_000;

/// `ROUTES` routes `{ host: tI.example, path_prefix: /api/I }`: the first to `first`, the
/// last to `last`, the others to `mid`; a wildcard route in the middle for `*.wild.example`
/// (declared after `t5000.wild.example`'s exact route, which must win), and `extra` pools.
fn yaml(addrs: [SocketAddr; 4], offset: usize, extra_pool: &str) -> String {
    let [first, mid, last, fallback] = addrs;
    let mut y = String::from(
        "threads: 2
admin: { listen: \"127.0.0.1:0\" }
listeners:
  - { name: web, listen: \"127.0.0.1:0\", protocol: http, pool: fallback }
routes:
",
    );
    for i in 0..ROUTES {
        let pool = match i {
            0 => "first",
            i if i == ROUTES - 1 => "last",
            _ => "mid",
        };
        let n = i + offset;
        if i == ROUTES / 2 {
            y += "  - { host: t5000.wild.example, path_prefix: /api, pool: first }\n";
            y += "  - { host: \"*.wild.example\", path_prefix: /api, pool: last }\n";
        }
        y += &format!("  - {{ host: t{n}.example, path_prefix: /api/{n}/, pool: {pool} }}\n");
    }
    y += &format!(
        "pools:
  first: {{ backends: [ {{ address: \"{first}\" }} ] }}
  mid: {{ backends: [ {{ address: \"{mid}\" }} ] }}
  last: {{ backends: [ {{ address: \"{last}\" }} ] }}
  fallback: {{ backends: [ {{ address: \"{fallback}\" }} ] }}
{extra_pool}"
    );
    y
}

/// A pool of `n` backends on loopback addresses nothing answers on (no request goes there).
fn big_pool(n: usize) -> String {
    let mut y = String::from("  spare:\n    backends:\n");
    for i in 0..n {
        y += &format!(
            "      - {{ address: \"127.2.{}.{}:9\" }}\n",
            i / 250,
            i % 250 + 1
        );
    }
    y
}

async fn backend_for(addr: SocketAddr, host: &str, path: &str) -> String {
    let reply = Client::connect(addr)
        .await
        .get_with(path, &[("host", host)])
        .await;
    reply
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

async fn check_routes(web: SocketAddr, offset: usize) {
    let last = ROUTES - 1 + offset;
    let cases = [
        (
            format!("t{offset}.example"),
            format!("/api/{offset}/x"),
            "first",
        ),
        (
            format!("t{}.example", offset + 7),
            format!("/api/{}/", offset + 7),
            "mid",
        ),
        (format!("t{last}.example"), format!("/api/{last}/x"), "last"),
        (format!("T{last}.Example"), format!("/api/{last}/x"), "last"),
        // The host of a route but not its path, and a host of none: the listener's pool.
        (
            format!("t{last}.example"),
            format!("/api/{}/x", last + 1),
            "fallback",
        ),
        (
            "other.example".to_owned(),
            "/api/0/x".to_owned(),
            "fallback",
        ),
        (
            "t5000.wild.example".to_owned(),
            "/api/x".to_owned(),
            "first",
        ),
        ("a.b.wild.example".to_owned(), "/api/x".to_owned(), "last"),
        ("wild.example".to_owned(), "/api/x".to_owned(), "fallback"),
    ];
    for (host, path, want) in cases {
        assert_eq!(backend_for(web, &host, &path).await, want, "{host} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_routes_route_like_a_scan_and_reload_under_traffic() {
    let backends = [echo("first"), echo("mid"), echo("last"), echo("fallback")];
    let addrs = backends.each_ref().map(|e| e.addr);
    let lb = Autolb::start(&yaml(addrs, 0, ""));
    let web = lb.addr("web");
    check_routes(web, 0).await;

    // Requests on keep-alive connections while the reload is applied: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(web).await;
            // Bounded: until told to stop, at most 120 s and 1,000,000 requests per client
            // (a count small enough to run out before a slow reload ends would stall the
            // wait for requests after it).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                let r = c.get_with("/", &[("host", "other.example")]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_until(30, "requests flowing", || async {
        (sent.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;
    std::fs::write(&lb.config, yaml(addrs, ROUTES, &big_pool(5_000))).expect("write");
    let started = std::time::Instant::now();
    let reply = admin_post(lb.admin, "/config/reload", None, &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    eprintln!(
        "reload to 10,000 other routes and 5,004 backends: {:?}",
        started.elapsed()
    );
    let before = sent.load(Ordering::Relaxed);
    wait_until(30, "requests after the reload", || async {
        (sent.load(Ordering::Relaxed) > before + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    check_routes(web, ROUTES).await;
    // 5,000 backends cost little while nothing is sent to them (their idle-connection stores
    // are made on first use): it was about 120 KiB a backend, 600 MB for these.
    let rss_mib = lb.rss_kib() / 1024;
    eprintln!("RSS with 10,000 routes and 5,004 backends: {rss_mib} MiB");
    assert!(rss_mib < 200, "RSS {rss_mib} MiB");
    // The old routes are gone.
    assert_eq!(backend_for(web, "t0.example", "/api/0/x").await, "fallback");
}
