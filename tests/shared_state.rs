//! Shared state with real `redis-server` processes (each test starts its own on free
//! loopback ports, killed when it ends) and two or three autolb processes: the fleet view
//! and config drift, a cluster-wide rate limit within its bound, Redis down and back with
//! zero failed requests, and a 3-master Redis Cluster.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{Cluster, Redis};
use common::{echo, Autolb, Client};
use serde_json::Value;

fn redis_config(backend: &SocketAddr, url: &str, pool_extra: &str) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n      - {{ address: \"{backend}\" }}\n{pool_extra}state:\n  backend: redis\n  redis: {{ url: \"{url}\" }}\n"
        ),
    )
}

async fn admin_json(lb: &Autolb, path: &str) -> Value {
    common::get(lb.admin, path).await.json()
}

/// Polls `cond` on `lb`'s `path` for at most `limit`.
async fn wait_for(
    lb: &Autolb,
    path: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    common::wait_for_value(
        limit.as_secs(),
        || admin_json(lb, path),
        cond,
        |v| format!("{path} never matched: {v:#}\n{}", lb.proc.log()),
    )
    .await
}

/// The other nodes seen now (unseen ones stay listed with `seen: false`).
fn other_nodes(v: &Value) -> usize {
    v["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["seen"] == true).count())
}

#[tokio::test]
async fn memory_is_the_default_and_node_rate_limits_hold() {
    let e = echo("m");
    let lb = Autolb::start(&common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    rate_limit: {{ rate: 5/s, burst: 5 }}\n    backends:\n      - {{ address: \"{}\" }}\n",
            e.addr
        ),
    ));
    let s = admin_json(&lb, "/redis/status").await;
    assert_eq!(s["kind"], "memory");
    // Nothing to connect to, nothing shared: not "shared, connected".
    assert_eq!(s["mode"], "memory");
    assert!(s["connected"].is_null(), "{s:#}");
    let mut c = Client::connect(lb.addr("web")).await;
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let r = c.get("/").await;
        match r.status {
            200 => ok += 1,
            429 => {
                assert!(r.headers.contains_key("retry-after"));
                limited += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert!((5..=7).contains(&ok), "admitted {ok}");
    assert_eq!(ok + limited, 30);
    let m = common::get(lb.admin, "/metrics").await.text();
    assert!(
        m.contains("autolb_rate_limited_total{pool=\"web\",scope=\"node\"}"),
        "{m}"
    );
    assert!(
        m.contains("autolb_shared_state_up{backend=\"memory\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn fleet_lists_other_nodes_flags_drift_and_forgets_dead_ones() {
    let redis = Redis::start();
    let e = echo("f");
    let same = redis_config(&e.addr, &redis.url(), "");
    let a = Autolb::start(&same);
    let b = Autolb::start(&same);
    let drifted = redis_config(&e.addr, &redis.url(), "    retries: 5\n");
    let c = Autolb::start(&drifted);

    let status = wait_for(&a, "/cluster/status", Duration::from_secs(15), |v| {
        other_nodes(v) == 2
    })
    .await;
    assert_eq!(status["fleet"]["config_drift"], true);
    assert_eq!(status["fleet"]["nodes_total"], 3);
    let nodes = status["nodes"].as_array().expect("nodes");
    let b_port = b.admin.port().to_string();
    for n in nodes {
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        assert!(n["uptime_seconds"].is_u64());
        assert_eq!(n["pools"][0]["name"], "web");
        let is_b = n["address"].as_str().is_some_and(|a| a.ends_with(&b_port));
        assert_eq!(n["config_drift"], !is_b, "{n:#}");
    }

    let r = admin_json(&a, "/redis/status").await;
    assert_eq!(r["kind"], "redis");
    assert_eq!(r["connected"], true);
    assert!(
        r["round_trip_ms"].as_f64().is_some_and(|ms| ms < 100.0),
        "{r:#}"
    );
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(1));
    let h = admin_json(&a, "/health").await;
    assert_eq!(h["shared_state"]["connected"], true);
    assert_eq!(h["shared_state"]["degraded"], false);

    let c_port = c.admin.port().to_string();
    drop(c);
    let status = wait_for(&a, "/cluster/status", Duration::from_secs(10), |v| {
        other_nodes(v) == 1
    })
    .await;
    assert_eq!(status["fleet"]["config_drift"], false);
    let gone = status["nodes"].as_array().and_then(|n| {
        n.iter()
            .find(|n| n["address"].as_str().is_some_and(|a| a.ends_with(&c_port)))
    });
    assert!(
        gone.is_some_and(|n| n["seen"] == false && n["last_seen_seconds_ago"].is_u64()),
        "{status:#}"
    );
    drop(b);
}

/// Sends GETs from `clients` connections to `addr` until `until`; returns (200s, 429s).
async fn hammer(addr: SocketAddr, clients: usize, until: Instant) -> (u64, u64) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let (mut ok, mut limited) = (0u64, 0u64);
            while Instant::now() < until {
                match c.get("/").await.status {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("status {s}"),
                }
            }
            (ok, limited)
        }));
    }
    let mut sum = (0, 0);
    for t in tasks {
        let (o, l) = t.await.expect("client");
        sum.0 += o;
        sum.1 += l;
    }
    sum
}

#[tokio::test]
async fn cluster_rate_limit_holds_across_nodes() {
    let redis = Redis::start();
    let e = echo("r");
    let cfg = redis_config(
        &e.addr,
        &redis.url(),
        "    rate_limit: { rate: 40/s, scope: cluster }\n",
    );
    let a = Autolb::start(&cfg);
    let b = Autolb::start(&cfg);
    for lb in [&a, &b] {
        wait_for(lb, "/redis/status", Duration::from_secs(10), |v| {
            v["connected"] == true
        })
        .await;
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(3);
    let (ra, rb) = tokio::join!(
        hammer(a.addr("web"), 4, until),
        hammer(b.addr("web"), 4, until)
    );
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = ra.0 + rb.0;
    // Aligned 1 s windows: the run touches at most ceil(elapsed) + 1 of them, each admitting
    // at most 40 + 2 nodes x 1 batch of credit across the fleet (node-local limits would
    // admit 80 per second).
    let windows = elapsed.ceil() + 1.0;
    assert!(
        admitted as f64 <= 42.0 * windows,
        "admitted {admitted} in {elapsed:.2}s ({ra:?} {rb:?})"
    );
    // At most one unused batch per node per window is lost.
    assert!(
        admitted as f64 >= 40.0 * (elapsed - 1.0) * 0.8,
        "admitted only {admitted} in {elapsed:.2}s"
    );
    assert!(ra.0 > 0 && rb.0 > 0, "both nodes admit: {ra:?} {rb:?}");
    assert!(ra.1 + rb.1 > 0);
}

#[tokio::test]
async fn redis_down_and_back_fails_no_request() {
    let mut redis = Redis::start();
    let e = echo("d");
    let cfg = redis_config(
        &e.addr,
        &redis.url(),
        "    rate_limit: { rate: 100000/s, scope: cluster }\n",
    );
    let a = Autolb::start(&cfg);
    let b = Autolb::start(&cfg);
    wait_for(&a, "/cluster/status", Duration::from_secs(10), |v| {
        other_nodes(v) == 1
    })
    .await;

    let until = Instant::now() + Duration::from_secs(6);
    let load = tokio::spawn(async move {
        let mut c = Client::connect(a.addr("web")).await;
        let mut slowest = Duration::ZERO;
        let mut n = 0u64;
        while Instant::now() < until {
            let t = Instant::now();
            assert_eq!(c.get("/").await.status, 200, "request {n} failed");
            slowest = slowest.max(t.elapsed());
            n += 1;
        }
        (a, n, slowest)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    let down = wait_for(&b, "/redis/status", Duration::from_secs(5), |v| {
        v["connected"] == false
    })
    .await;
    assert!(down["last_error"].is_string(), "{down:#}");
    let h = admin_json(&b, "/health").await;
    assert_eq!(h["shared_state"]["degraded"], true);
    let m = common::get(b.admin, "/metrics").await.text();
    assert!(
        m.contains("autolb_shared_state_up{backend=\"redis\"} 0"),
        "{m}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    wait_for(&b, "/redis/status", Duration::from_secs(10), |v| {
        v["connected"] == true
    })
    .await;
    let (a, n, slowest) = load.await.expect("load");
    assert!(n > 100, "only {n} requests");
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    wait_for(&a, "/cluster/status", Duration::from_secs(10), |v| {
        other_nodes(v) == 1
    })
    .await;
    let m = common::get(a.admin, "/metrics").await.text();
    assert!(
        m.contains("autolb_shared_state_up{backend=\"redis\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn redis_cluster_of_three_masters() {
    // Default node timeout (15 s): nothing fails over here.
    let cluster = Cluster::start(3, 0, 15_000, &[]);
    let masters = &cluster.nodes;
    let e = echo("c");
    let cfg = redis_config(
        &e.addr,
        &masters[0].url(),
        "    rate_limit: { rate: 30/s, scope: cluster }\n",
    );
    let a = Autolb::start(&cfg);
    let b = Autolb::start(&cfg);
    let r = wait_for(&a, "/redis/status", Duration::from_secs(10), |v| {
        v["connected"] == true && v["nodes"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    assert_eq!(r["kind"], "redis-cluster");
    wait_for(&b, "/cluster/status", Duration::from_secs(10), |v| {
        other_nodes(v) == 1
    })
    .await;
    let start = Instant::now();
    let (ra, rb) = tokio::join!(
        hammer(a.addr("web"), 2, start + Duration::from_secs(2)),
        hammer(b.addr("web"), 2, start + Duration::from_secs(2))
    );
    let windows = start.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(((ra.0 + rb.0) as f64) <= 32.0 * windows, "{ra:?} {rb:?}");
    assert!(ra.0 + rb.0 > 0);
    drop(cluster);
}
