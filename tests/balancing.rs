//! Each algorithm through the real listener, against real backends.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, Autolb, Client, Echo};

fn config(balance: &str, extra: &str, backends: &[(&Echo, u32)]) -> String {
    let addrs: Vec<(SocketAddr, u32)> = backends.iter().map(|(e, w)| (e.addr, *w)).collect();
    pool_config(2, balance, extra, &addrs)
}

fn pool_config(
    threads: usize,
    balance: &str,
    extra: &str,
    backends: &[(SocketAddr, u32)],
) -> String {
    let list: String = backends
        .iter()
        .map(|(a, w)| format!("      - {{ address: \"{a}\", weight: {w} }}\n"))
        .collect();
    common::config(
        threads,
        "",
        &format!("pools:\n  web:\n    balance: {balance}\n{extra}    backends:\n{list}"),
    )
}

/// Send `n` GETs over `conns` keep-alive connections; count answers by backend name.
async fn spread(addr: SocketAddr, path: &str, n: usize, conns: usize) -> HashMap<String, usize> {
    let counts = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let counts = counts.clone();
        let path = path.to_string();
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            for _ in 0..share {
                let r = client.get(&path).await;
                assert_eq!(r.status, 200, "{}", r.text());
                let name = r.headers["x-backend"].to_str().expect("name").to_string();
                *counts.lock().expect("lock").entry(name).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let c = counts.lock().expect("lock").clone();
    c
}

#[tokio::test]
async fn weighted_round_robin_gives_three_to_one() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = Autolb::start(&config("weighted_round_robin", "", &[(&a, 3), (&b, 1)]));
    let c = spread(lb.addr("web"), "/", 4000, 4).await;
    let ratio = c["a"] as f64 / c["b"] as f64;
    assert!((2.85..=3.15).contains(&ratio), "{c:?}");
}

#[tokio::test]
async fn round_robin_and_random_spread_by_weight() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = Autolb::start(&config("round_robin", "", &[(&a, 1), (&b, 1)]));
    let c = spread(lb.addr("web"), "/", 1000, 2).await;
    assert!((480..=520).contains(&c["a"]), "{c:?}");
    drop(lb);
    let lb = Autolb::start(&config("random", "", &[(&a, 3), (&b, 1)]));
    let c = spread(lb.addr("web"), "/", 4000, 4).await;
    // Expected share 0.75 with a standard deviation under 0.007: a 0.05 margin never flakes.
    let share = c["a"] as f64 / 4000.0;
    assert!((0.70..=0.80).contains(&share), "{c:?}");
}

/// A backend that answers every request after `delay`, counting them.
async fn slow_backend(delay: Duration, hits: Arc<AtomicUsize>) -> SocketAddr {
    common::hyper_backend(move |_req| {
        hits.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(delay).await;
            http::Response::builder()
                .header("x-backend", "slow")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"slow",
                )))
                .expect("response")
        }
    })
    .await
}

async fn slow_share(balance: &str) -> (usize, usize) {
    let hits = Arc::new(AtomicUsize::new(0));
    let slow = slow_backend(Duration::from_millis(300), hits.clone()).await;
    let fast = echo("fast");
    let lb = Autolb::start(&pool_config(1, balance, "", &[(slow, 1), (fast.addr, 1)]));
    let c = spread(lb.addr("web"), "/", 200, 8).await;
    (
        c.get("slow").copied().unwrap_or(0),
        hits.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn least_conn_and_p2c_avoid_a_backend_holding_slow_requests() {
    // Round robin is the control: it sends half of the requests to the slow backend.
    let (rr, _) = slow_share("round_robin").await;
    assert!(
        (90..=110).contains(&rr),
        "round_robin sent {rr} of 200 to the slow backend"
    );
    for balance in ["least_conn", "p2c", "peak_ewma"] {
        let (slow, hits) = slow_share(balance).await;
        assert_eq!(slow, hits);
        // Eight clients: the slow backend holds at most a few requests at any time, while
        // the fast one answers the rest.
        assert!(
            slow <= 40,
            "{balance} sent {slow} of 200 to the slow backend"
        );
    }
}

fn hash_config(key: &str, backends: &[&Echo]) -> String {
    let list: Vec<(&Echo, u32)> = backends.iter().map(|e| (*e, 1)).collect();
    config(
        "consistent_hash",
        &format!("    hash_key: \"{key}\"\n"),
        &list,
    )
}

async fn owners(addr: SocketAddr, keys: usize) -> Vec<String> {
    let mut client = Client::connect(addr).await;
    let mut out = Vec::with_capacity(keys);
    for k in 0..keys {
        let user = format!("user-{k}");
        let r = client.get_with("/", &[("x-user", user.as_str())]).await;
        out.push(r.text());
    }
    out
}

#[tokio::test]
async fn consistent_hash_keeps_keys_and_moves_a_quarter_when_one_of_four_goes() {
    let e: Vec<Echo> = ["h0", "h1", "h2", "h3"].iter().map(|n| echo(n)).collect();
    let refs: Vec<&Echo> = e.iter().collect();
    let four = Autolb::start(&hash_config("header:x-user", &refs));
    let first = owners(four.addr("web"), 400).await;
    let again = owners(four.addr("web"), 400).await;
    assert_eq!(first, again, "each key stays on one backend");
    let used: std::collections::HashSet<&String> = first.iter().collect();
    assert_eq!(used.len(), 4, "keys spread over all backends");

    // Another autolb (same seed, as on another node) without h3.
    let three = Autolb::start(&hash_config("header:x-user", &refs[..3]));
    let after = owners(three.addr("web"), 400).await;
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    for (a, b) in first.iter().zip(&after) {
        if a != b {
            assert_eq!(a, "h3", "only keys of the removed backend move");
        }
    }
    // Exactly the removed backend's keys move: every one of them (h3 is gone) and no other.
    let owned_by_h3 = first.iter().filter(|o| *o == "h3").count();
    assert_eq!(
        moved, owned_by_h3,
        "the keys that moved are the ones h3 owned"
    );
    // h3's share of the ring is about a quarter. The ring points hash the backends' random
    // ports and 400 keys are a sample, so the share spreads (about 3 points of standard
    // deviation); the bounds are 4 deviations wide, not a statement about one run.
    let share = moved as f64 / 400.0;
    assert!((0.12..=0.40).contains(&share), "{moved} of 400 keys moved");
}

#[tokio::test]
async fn consistent_hash_by_uri_and_cookie() {
    let e: Vec<Echo> = ["u0", "u1", "u2"].iter().map(|n| echo(n)).collect();
    let refs: Vec<&Echo> = e.iter().collect();
    let lb = Autolb::start(&hash_config("cookie:session", &refs));
    let mut client = Client::connect(lb.addr("web")).await;
    let mut seen = std::collections::HashSet::new();
    for k in 0..30 {
        let cookie = format!("a=b; session=s{k}");
        let one = client
            .get_with("/", &[("cookie", cookie.as_str())])
            .await
            .text();
        let two = client
            .get_with("/", &[("cookie", cookie.as_str())])
            .await
            .text();
        assert_eq!(one, two);
        seen.insert(one);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    drop(lb);
    let lb = Autolb::start(&hash_config("uri", &refs));
    let mut client = Client::connect(lb.addr("web")).await;
    for k in 0..20 {
        let path = format!("/?item={k}");
        let one = client.get(&path).await.text();
        assert_eq!(one, client.get(&path).await.text());
    }
}
