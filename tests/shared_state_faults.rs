//! Shared-state faults under load, with real `redis-server` processes (free loopback ports,
//! killed when the test ends) and two autolb processes using every request-path feature that
//! touches the shared state (a cluster rate limit, learned sticky sessions): a slow Redis
//! (SIGSTOP, then SIGCONT) and a stopped Redis Cluster node (then restarted). No request
//! fails or waits past a bound, `/redis/status` shows the degradation, and recovery is
//! automatic.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{cli, Cluster, Redis};
use common::shared::{app, shared_session, status, wait_status, Load, BOUND};
use common::Autolb;
use serde_json::Value;

fn config(backends: &[SocketAddr], url: &str) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    rate_limit: {{ rate: 100000/s, scope: cluster }}\n    sticky: {{ learn_cookie: JSESSIONID }}\n    backends:\n{}state:\n  backend: redis\n  redis: {{ url: \"{url}\" }}\n",
            common::backend_list(backends, "")
        ),
    )
}

fn errors(v: &Value) -> u64 {
    v["errors_total"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_stopped_redis_slows_no_request() {
    let mut redis = Redis::start();
    let backends = [app("b0").await, app("b1").await];
    let cfg = config(&backends, &redis.url());
    let (a, b) = (Autolb::start(&cfg), Autolb::start(&cfg));
    let session = shared_session(&a, &b).await;
    let before = errors(&status(&b).await);

    let until = Instant::now() + Duration::from_secs(7);
    let la = Load::start(a.addr("web"), session.clone(), Duration::from_secs(7));
    let lb = Load::start(b.addr("web"), session.clone(), Duration::from_secs(7));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Redis hangs: its connections stay open but nothing answers.
    redis.signal(libc::SIGSTOP);
    let down = wait_status(&b, 5, "never degraded", |v| v["connected"] == false).await;
    assert_eq!(down["mode"], "node-local");
    assert!(down["last_error"].is_string(), "{down:#}");
    assert!(errors(&down) > before, "{down:#}");
    let h = common::get(b.admin, "/health").await.json();
    assert_eq!(h["shared_state"]["degraded"], true, "{h:#}");
    let m = common::get(a.admin, "/metrics").await.text();
    assert!(
        m.contains("autolb_shared_state_up{backend=\"redis\"} 0"),
        "{m}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.signal(libc::SIGCONT);
    for lb in [&a, &b] {
        let up = wait_status(lb, 10, "never recovered", |v| v["connected"] == true).await;
        assert_eq!(up["mode"], "shared");
    }
    // The load runs its full time, recovery included.
    tokio::time::sleep_until(until.into()).await;
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, slowest) = l.finish().await;
        assert!(n > 50, "node {name}: only {n} requests");
        assert!(slowest < BOUND, "node {name}: {slowest:?}");
    }
    // Shared again: a new session learned on B is honoured by A.
    let s2 = shared_session(&b, &a).await;
    assert!(!s2.0.is_empty());
}

#[tokio::test]
async fn a_stopped_cluster_node_fails_no_request() {
    let mut cluster = Cluster::start(3, 0, 1000, &[]);
    let masters = &mut cluster.nodes;
    let cluster_ok = |masters: &[Redis]| {
        masters
            .iter()
            .all(|m| cli(m.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    };
    let backends = [app("b0").await, app("b1").await];
    let cfg = config(&backends, &masters[0].url());
    let (a, b) = (Autolb::start(&cfg), Autolb::start(&cfg));
    wait_status(&a, 15, "cluster not seen", |v| {
        v["kind"] == "redis-cluster" && v["nodes"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let session = shared_session(&a, &b).await;
    let before = errors(&status(&a).await);

    let until = Instant::now() + Duration::from_secs(8);
    let la = Load::start(a.addr("web"), session.clone(), Duration::from_secs(8));
    let lb = Load::start(b.addr("web"), session.clone(), Duration::from_secs(8));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One master goes away: its slots do not answer (and, without replicas, the cluster
    // goes down after the node timeout).
    masters[2].stop();
    let degraded = wait_status(&a, 10, "never degraded", |v| {
        errors(v) > before && v["last_error"].is_string()
    })
    .await;
    assert!(degraded["last_error_seconds_ago"].is_u64(), "{degraded:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Back on its port with its node file: it rejoins the cluster.
    masters[2].restart();
    common::wait_until(20, "the cluster to recover", || async {
        cluster_ok(masters).then_some(())
    })
    .await;
    // The load runs its full time, recovery included.
    tokio::time::sleep_until(until.into()).await;
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, slowest) = l.finish().await;
        assert!(n > 50, "node {name}: only {n} requests");
        assert!(slowest < BOUND, "node {name}: {slowest:?}");
    }
    for lb in [&a, &b] {
        wait_status(lb, 15, "never recovered", |v| {
            v["connected"] == true
                && v["nodes"].as_array().is_some_and(|n| {
                    n.len() == 3
                        && n.iter()
                            .all(|x| x["failed"] == false && x["link"] == "connected")
                })
        })
        .await;
    }
    // Shared again: a session learned on B is honoured by A.
    shared_session(&b, &a).await;
    drop(cluster);
}
