//! Cache purges across a fleet: two autolb nodes sharing a real `redis-server` (started on a
//! free loopback port, killed at the end), each with its own cache of one backend; a purge
//! through one node's admin API empties the other's within a second. Two more paths are
//! driven with `redis-cli` alone: a message on the pub/sub channel (the group never holds
//! it), and a purge stored only in the group (its message missed: the poll finds it).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::Redis;
use common::{admin_post, Autolb, Client};
use http_body_util::Full;

/// Waits until the node listens on the purge channel (`/redis/status` `subscribed`).
async fn subscribed(lb: &Autolb) {
    common::wait_until(15, "subscribed to autolb:cache-purges", || async {
        let v = common::get(lb.admin, "/redis/status").await.json();
        v["subscribed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "autolb:cache-purges"))
            .then_some(())
    })
    .await;
}

/// Asks for `path` until the node answers it from the backend (purged), within `secs`.
async fn until_miss(c: &mut Client, lb: &Autolb, path: &str, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        if x_cache(&c.get(path).await) == "MISS" {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "the node still answers {path} from its cache {:?} later\n{}",
            start.elapsed(),
            lb.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One node with a cache on a counting backend, on the shared `redis`.
async fn one_node(redis: &Redis) -> (Autolb, Arc<AtomicU32>) {
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    let backend = common::hyper_backend(move |req| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            http::Response::builder()
                .header("cache-control", "max-age=600")
                .body(Full::new(Bytes::from(format!("{} #{n}", req.uri().path()))))
                .unwrap()
        }
    })
    .await;
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:
  web:
    cache: {{}}
    backends:
      - {{ address: \"{backend}\" }}
state:
  backend: redis
  redis: {{ url: \"{}\" }}
",
            redis.url()
        ),
    );
    let lb = Autolb::start(&yaml);
    subscribed(&lb).await;
    (lb, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_message_published_by_anyone_is_applied() {
    let redis = Redis::start();
    let (lb, served) = one_node(&redis).await;
    let mut c = Client::connect(lb.addr("web")).await;
    for path in ["/news/1", "/news/2", "/about"] {
        c.get(path).await;
        assert_eq!(x_cache(&c.get(path).await), "HIT");
    }
    // Only on the channel: nothing in the group, so only a subscriber can see it.
    let message = r#"{"id":"redis-cli:1","purge":{"path_prefix":"/news/"}}"#;
    let receivers = common::redis::cli(redis.port, &["PUBLISH", "autolb:cache-purges", message]);
    assert_eq!(receivers.trim(), "1", "one subscriber (the node)");
    let took = until_miss(&mut c, &lb, "/news/1", 10).await;
    eprintln!("applied within {took:?} of the PUBLISH");
    assert_eq!(x_cache(&c.get("/news/2").await), "MISS");
    assert_eq!(x_cache(&c.get("/about").await), "HIT");
    // The same id again is not applied twice.
    common::redis::cli(redis.port, &["PUBLISH", "autolb:cache-purges", message]);
    let marker = r#"{"id":"redis-cli:2","purge":{"path_prefix":"/nothing-here"}}"#;
    common::redis::cli(redis.port, &["PUBLISH", "autolb:cache-purges", marker]);
    common::wait_until(10, "the marker purge applied", || async {
        lb.proc.log().contains("redis-cli:2").then_some(())
    })
    .await;
    assert_eq!(x_cache(&c.get("/news/1").await), "HIT", "{}", lb.proc.log());
    assert_eq!(served.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_whose_message_was_missed_is_found_in_the_group() {
    let redis = Redis::start();
    let (lb, _served) = one_node(&redis).await;
    let mut c = Client::connect(lb.addr("web")).await;
    c.get("/old").await;
    assert_eq!(x_cache(&c.get("/old").await), "HIT");
    // What a node stores for a purge, with no message at all: the poll applies it.
    let value = r#"{"Url":{"host":"127.0.0.1","path_and_query":"/old"}}"#;
    let set = common::redis::cli(
        redis.port,
        &[
            "SET",
            "{autolb:cache-purges}:m:other:7",
            value,
            "PX",
            "10000",
        ],
    );
    assert_eq!(set.trim(), "OK");
    common::redis::cli(
        redis.port,
        &["SADD", "{autolb:cache-purges}:ids", "other:7"],
    );
    let took = until_miss(&mut c, &lb, "/old", 10).await;
    eprintln!("found in the group within {took:?}");
}

fn x_cache(r: &common::Reply) -> String {
    r.headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_node_empties_the_other() {
    let redis = Redis::start();
    let served = Arc::new(AtomicU32::new(0));
    let count = served.clone();
    let backend = common::hyper_backend(move |req| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            http::Response::builder()
                .header("cache-control", "max-age=600")
                .body(Full::new(Bytes::from(format!("{} #{n}", req.uri().path()))))
                .unwrap()
        }
    })
    .await;
    let token = "purge-token";
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:
  web:
    cache: {{}}
    backends:
      - {{ address: \"{backend}\" }}
state:
  backend: redis
  redis: {{ url: \"{}\" }}
",
            redis.url()
        ),
    )
    .replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_env: PURGE_TOKEN }",
    );
    let a = Autolb::start_with_env(&yaml, &[("PURGE_TOKEN", token)]);
    let b = Autolb::start_with_env(&yaml, &[("PURGE_TOKEN", token)]);
    for lb in [&a, &b] {
        common::wait_until(15, "shared state connected", || async {
            let v = common::get(lb.admin, "/redis/status").await.json();
            (v["connected"] == true).then_some(())
        })
        .await;
        subscribed(lb).await;
    }
    // Both nodes store /page (each its own copy) and answer it from their cache.
    let mut ca = Client::connect(a.addr("web")).await;
    let mut cb = Client::connect(b.addr("web")).await;
    for c in [&mut ca, &mut cb] {
        c.get("/page").await;
        assert_eq!(x_cache(&c.get("/page").await), "HIT");
        c.get("/other").await;
    }
    assert_eq!(served.load(Ordering::SeqCst), 4);

    // The purge goes to node a; node b drops /page within a second, keeps /other.
    let r = admin_post(
        a.admin,
        "/cache/purge",
        Some(token),
        &[],
        r#"{"host":"127.0.0.1","path_prefix":"/page"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["fleet"], true, "{}", r.text());
    assert_eq!(x_cache(&ca.get("/page").await), "MISS");
    // Applied at once (pub/sub); 5 s of margin for a loaded machine.
    let took = until_miss(&mut cb, &b, "/page", 5).await;
    eprintln!("node b applied the purge within {took:?}");
    assert_eq!(x_cache(&cb.get("/other").await), "HIT");
    // Applied once: a later purge of another path leaves the refilled /page alone.
    assert_eq!(x_cache(&cb.get("/page").await), "HIT");
}
