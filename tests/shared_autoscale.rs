//! One autoscaler for a pool shared by several autolb nodes (`autoscale.shared: true`), with
//! a real `redis-server`: exactly one leader, each node runs its share of the fleet-wide
//! size, a paused leader loses the lease without two leaders acting at once, and a killed
//! leader is replaced within seconds by one with a newer fencing token.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::Autolb;
use serde_json::Value;

/// A shared pool of autolb-echo instances; each node gets its own port range.
fn shared_config(url: &str, node: u32, min: u32) -> String {
    let lo = 6000 + (std::process::id() % 40) * 90 + node * 30;
    common::config(
        1,
        "",
        &format!(
            "pools:
  web:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      shared: true
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: {min}
      max: 6
      interval: 500ms
      target: {{ inflight_per_instance: 1000 }}
      scale_down: {{ stabilization: 1s }}
      drain_timeout: 1s
      stop_grace: 1s
state:
  backend: redis
  redis: {{ url: \"{url}\" }}
",
            echo = common::ECHO,
            hi = lo + 9,
        ),
    )
}

fn node(url: &str, n: u32, min: u32) -> Autolb {
    let id = format!("node-{n}");
    Autolb::start_with_env(&shared_config(url, n, min), &[("AUTOLB_NODE_ID", &id)])
}

async fn pool_status(lb: &Autolb) -> Option<Value> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        common::get(lb.admin, "/scaling/status"),
    )
    .await
    .ok()?;
    Some(r.json()["pools"][0].clone())
}

/// Every node's pool status (None for a node that does not answer).
async fn statuses(nodes: &[&Autolb]) -> Vec<Option<Value>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(pool_status(n).await);
    }
    out
}

fn leaders(s: &[Option<Value>]) -> Vec<String> {
    s.iter()
        .flatten()
        .filter(|v| v["is_leader"] == true)
        .filter_map(|v| v["fleet"]["node_id"].as_str().map(String::from))
        .collect()
}

/// Polls every node until `cond` holds on all answers, asserting at most one leader in
/// every sample; returns the last sample.
async fn wait_all(
    nodes: &[&Autolb],
    limit: Duration,
    what: &str,
    cond: impl Fn(&[Option<Value>]) -> bool,
) -> Vec<Option<Value>> {
    common::wait_for_value(
        limit.as_secs(),
        || async {
            let s = statuses(nodes).await;
            let l = leaders(&s);
            assert!(l.len() <= 1, "two leaders at once: {l:?}\n{s:#?}");
            s
        },
        |s| cond(s),
        |s| {
            let logs: Vec<String> = nodes.iter().map(|n| n.proc.log()).collect();
            format!("{what}: never happened: {s:#?}\n{}", logs.join("\n----\n"))
        },
    )
    .await
}

fn current(v: &Option<Value>) -> u64 {
    v.as_ref().and_then(|v| v["current"].as_u64()).unwrap_or(0)
}

fn token(v: &Option<Value>) -> u64 {
    v.as_ref()
        .and_then(|v| v["fencing_token"].as_u64())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn one_leader_shares_and_hands_over() {
    let redis = Redis::start();
    let url = redis.url();
    let a = node(&url, 0, 3);
    let b = node(&url, 1, 3);
    let c = node(&url, 2, 3);

    // One leader; the fleet-wide 3 instances run one per node (once the leader's first
    // decisions, made before every node reported, have settled at 3).
    let s = wait_all(
        &[&a, &b, &c],
        Duration::from_secs(40),
        "one per node",
        |s| {
            leaders(s).len() == 1
                && s.iter().all(|v| {
                    current(v) == 1
                        && v.as_ref()
                            .is_some_and(|v| v["fleet"]["desired"] == 3 && v["fleet"]["share"] == 1)
                })
        },
    )
    .await;
    let first = leaders(&s)[0].clone();
    let t1 = token(&s[0]);
    for v in s.iter().flatten() {
        assert_eq!(v["shared"], true);
        assert_eq!(v["leader"], first.as_str(), "{v:#}");
        assert_eq!(v["fleet"]["desired"], 3, "{v:#}");
        assert_eq!(v["fleet"]["share"], 1, "{v:#}");
        assert_eq!(v["fleet"]["mode"], "shared");
        assert!(t1 >= 1 && token(&Some(v.clone())) == t1, "{v:#}");
    }

    // Pause the leader: another takes over with a newer token; when the old one resumes
    // it does not lead (its lease lapsed), so there is never more than one.
    let nodes = [&a, &b, &c];
    let ids = ["node-0", "node-1", "node-2"];
    let idx = ids.iter().position(|i| *i == first).expect("leader id");
    let paused = nodes[idx];
    let rest: Vec<&Autolb> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, n)| *n)
        .collect();
    signal(paused.proc.pid(), "-STOP");
    let t0 = Instant::now();
    let s = wait_all(&rest, Duration::from_secs(8), "handover after pause", |s| {
        leaders(s).len() == 1 && leaders(s)[0] != first && token(&s[0]) > t1
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    let second = leaders(&s)[0].clone();
    let t2 = token(&s[0]);
    signal(paused.proc.pid(), "-CONT");
    // The resumed node learns the new leader and token; there is still one leader.
    let s = wait_all(
        &nodes,
        Duration::from_secs(5),
        "resumed node follows",
        |s| {
            s.iter()
                .all(|v| v.as_ref().is_some_and(|v| v["leader"] == second.as_str()))
                && token(&s[idx]) == t2
        },
    )
    .await;
    assert_eq!(leaders(&s), vec![second.clone()]);

    // Kill the leader: the two others share the fleet's 3 (2 + 1) under a new leader.
    let kidx = ids.iter().position(|i| *i == second).expect("leader id");
    signal(nodes[kidx].proc.pid(), "-KILL");
    let rest: Vec<&Autolb> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != kidx)
        .map(|(_, n)| *n)
        .collect();
    let t0 = Instant::now();
    let s = wait_all(&rest, Duration::from_secs(8), "handover after kill", |s| {
        leaders(s).len() == 1 && token(&s[0]) > t2
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_ne!(leaders(&s)[0], second);
    wait_all(&rest, Duration::from_secs(20), "3 over two nodes", |s| {
        let mut c: Vec<u64> = s.iter().map(current).collect();
        c.sort_unstable();
        c == vec![1, 2]
    })
    .await;
    drop((a, b, c));
}
