//! Cache purges across a fleet: two autolb nodes sharing a real `redis-server` (started on a
//! free loopback port, killed at the end), each with its own cache of one backend; a purge
//! through one node's admin API empties the other's within a second.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::Redis;
use common::{admin_post, Autolb, Client};
use http_body_util::Full;

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
    let purged = Instant::now();
    assert_eq!(x_cache(&ca.get("/page").await), "MISS");
    loop {
        let r = cb.get("/page").await;
        if x_cache(&r) == "MISS" {
            break;
        }
        assert!(
            // Applied within a quarter of a second; 5 s of margin for a loaded machine.
            purged.elapsed() < Duration::from_secs(5),
            "node b still answers /page from its cache {:?} after the purge\n{}",
            purged.elapsed(),
            b.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("node b applied the purge within {:?}", purged.elapsed());
    assert_eq!(x_cache(&cb.get("/other").await), "HIT");
    // Applied once: a later purge of another path leaves the refilled /page alone.
    assert_eq!(x_cache(&cb.get("/page").await), "HIT");
}
