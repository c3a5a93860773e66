//! Redis failovers as Redis is really run, under load on two autolb nodes (a cluster rate
//! limit, learned sessions, unknown sessions that each cost a lookup, and a pool scaled by
//! one leader for the fleet): `kill -9` of the Redis Cluster master named in the config (3
//! masters + 3 replicas, `cluster-node-timeout 2000`, an ACL user with only what autolb
//! needs), and of a Sentinel-managed master (3 Sentinels). No request fails, both nodes are
//! `shared` again within the bound, and what the fleet shares survives.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{acl_user, cli, wait, Cluster, Redis, Sentinels};
use common::shared::{
    app, leaders, metric, shared_pool, shared_session, status, token, wait_fleet, wait_status, Load,
};
use common::{Autolb, Client};
use serde_json::Value;

const NODE_TIMEOUT_MS: u64 = 2000;

fn config(backends: &[SocketAddr], node: u32, redis: &str) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    rate_limit: {{ rate: 100000/s, scope: cluster }}\n    sticky: {{ learn_cookie: JSESSIONID }}\n    backends:\n{}{}state:\n  backend: redis\n  redis:\n{redis}",
            common::backend_list(backends, ""),
            shared_pool(node, 2),
        ),
    )
}

fn node(cfg: &str, id: &str, env: &[(&str, &str)]) -> Autolb {
    let mut all = vec![("AUTOLB_NODE_ID", id)];
    all.extend_from_slice(env);
    Autolb::start_with_env(cfg, &all)
}

fn talking_to(v: &Value) -> Vec<String> {
    v["topology"]["talking_to"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `ROLE` of `r` until it is a master; the moment it was seen. (On a blocking
/// thread: the load's tasks keep running.)
async fn promoted(r: &Redis, secs: u64) -> Instant {
    let port = r.port;
    common::wait_until(secs, "the replica to be promoted", || async move {
        let role = tokio::task::spawn_blocking(move || cli(port, &["ROLE"]))
            .await
            .expect("redis-cli");
        (role.lines().next().map(str::trim) == Some("master")).then(Instant::now)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_fails_no_request() {
    let mut cluster = Cluster::start(3, 1, NODE_TIMEOUT_MS, &[]);
    for n in &cluster.nodes {
        acl_user(n.port, "autolb", "s3cret");
    }
    // The victim: the master of the lease's slot, the one both nodes are configured with.
    let lease_key = "{autolb:lease:autoscale:auto}:token";
    let (v, r) = cluster.master_and_replica_of_key(lease_key);
    let other = (0..cluster.nodes.len())
        .find(|i| *i != v && *i != r && cluster.nodes[*i].role() == "master")
        .expect("another master");
    // A fencing counter with history: had it been lost in the failover, the next token
    // would start again at 1.
    assert_eq!(
        cli(cluster.nodes[v].port, &["SET", lease_key, "41"]).trim(),
        "OK"
    );
    let (victim, replica) = (cluster.nodes[v].addr(), cluster.nodes[r].addr());

    let backends = [app("b0").await, app("b1").await];
    // Node A knows two seeds; node B only the victim, with the password from the environment.
    let a = node(
        &config(
            &backends,
            0,
            &format!(
                "    urls: [\"redis://autolb:s3cret@{victim}\", \"redis://autolb:s3cret@{}\"]\n",
                cluster.nodes[other].addr()
            ),
        ),
        "node-a",
        &[],
    );
    let b = node(
        &config(
            &backends,
            1,
            &format!(
                "    url: \"redis://autolb@{victim}\"\n    password_env: AUTOLB_REDIS_PASSWORD\n"
            ),
        ),
        "node-b",
        &[("AUTOLB_REDIS_PASSWORD", "s3cret")],
    );
    for lb in [&a, &b] {
        let s = wait_status(lb, 20, "cluster not seen", |v| {
            v["kind"] == "redis-cluster"
                && v["mode"] == "shared"
                && v["topology"]["masters"].as_array().map(Vec::len) == Some(3)
                && v["topology"]["replicas"].as_array().map(Vec::len) == Some(3)
        })
        .await;
        assert!(talking_to(&s).contains(&victim), "{s:#}");
        assert_eq!(s["failovers_total"], 0);
    }
    let session = shared_session(&a, &b).await;
    let s = wait_fleet(&[&a, &b], 30, "one leader", |s| {
        leaders(s).len() == 1 && s.iter().flatten().all(|f| f["mode"] == "shared")
    })
    .await;
    let (leader1, t1) = (leaders(&s)[0].clone(), token(&s));
    assert!(t1 >= 42, "the token continues the counter: {s:#?}");

    let la = Load::start(a.addr("web"), session.clone(), Duration::from_secs(90));
    let lb = Load::start(b.addr("web"), session.clone(), Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    cluster.nodes[v].stop();
    let at = promoted(&cluster.nodes[r], 30).await;
    // Back to shared on the promoted replica, within 2 x cluster-node-timeout + 1 s of the
    // promotion (measured from when this test saw it: at most a poll later).
    let bound = Duration::from_millis(2 * NODE_TIMEOUT_MS + 1000);
    let followed = |v: &Value| {
        v["mode"] == "shared"
            && v["last_failover"]["to"] == replica.as_str()
            && talking_to(v).contains(&replica)
    };
    let (sa, sb) = tokio::join!(
        wait_status(&a, 20, "A never followed the failover", followed),
        wait_status(&b, 20, "B never followed the failover", followed),
    );
    let took = at.elapsed();
    eprintln!(
        "promoted {:?} after the kill; both nodes shared again {took:?} after the promotion",
        at - killed
    );
    assert!(took <= bound, "shared again {took:?} after the promotion");
    for s in [&sa, &sb] {
        assert_eq!(s["last_failover"]["from"], victim.as_str(), "{s:#}");
        assert!(s["failovers_total"].as_u64() >= Some(1), "{s:#}");
        assert!(!talking_to(s).contains(&victim), "{s:#}");
    }
    // The lease survived (its counter too): one leader, a token at least as new, newer if
    // the leader changed.
    let s = wait_fleet(&[&a, &b], 20, "one leader again", |s| {
        leaders(s).len() == 1 && s.iter().flatten().all(|f| f["mode"] == "shared")
    })
    .await;
    let t2 = token(&s);
    assert!(t2 >= t1, "token {t2} < {t1}");
    if leaders(&s)[0] != leader1 {
        assert!(t2 > t1, "a new leader with the old token {t1}");
    }
    // Cluster rate limits are shared again.
    for lb in [&a, &b] {
        common::wait_until(10, "cluster rate limit shared again", || async {
            (metric(lb, "autolb_rate_limit_node_local{pool=\"web\"}").await == Some(0.0))
                .then_some(())
        })
        .await;
        assert!(metric(lb, "autolb_shared_state_failovers_total").await >= Some(1.0));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, _) = l.finish().await;
        assert!(n > 100, "node {name}: only {n} requests");
    }
    // The learned session survived in Redis: a new node without any cache honours it.
    let c = node(
        &config(
            &backends,
            2,
            &format!("    url: \"redis://autolb:s3cret@{replica}\"\n"),
        ),
        "node-c",
        &[],
    );
    wait_status(&c, 20, "C never connected", |v| v["mode"] == "shared").await;
    let mut client = Client::connect(c.addr("web")).await;
    let r = common::shared::get_session(&mut client, &session.0).await;
    assert_eq!(r.text(), session.1, "the learned session was lost");
    assert_eq!(status(&c).await["failovers_total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_fails_no_request() {
    let mut master = Redis::start();
    let replica = Redis::start_with(vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port.to_string(),
    ]);
    wait(15, "the replica never synced", || {
        cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let sentinels = Sentinels::start(3, "autolb", master.port, 2, 1000, 1);
    let list: Vec<String> = sentinels
        .addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let redis = format!(
        "    sentinels: [{}]\n    master_name: autolb\n",
        list.join(", ")
    );
    let backends = [app("b0").await, app("b1").await];
    let a = node(&config(&backends, 0, &redis), "node-a", &[]);
    let b = node(&config(&backends, 1, &redis), "node-b", &[]);
    for lb in [&a, &b] {
        let s = wait_status(lb, 20, "Sentinel master not used", |v| {
            v["kind"] == "redis-sentinel"
                && v["mode"] == "shared"
                && v["topology"]["sentinels"]
                    .as_array()
                    .is_some_and(|s| s.len() == 3 && s.iter().all(|x| x["subscribed"] == true))
                && v["topology"]["replicas"].as_array().map(Vec::len) == Some(1)
        })
        .await;
        assert_eq!(talking_to(&s), vec![master.addr()], "{s:#}");
        assert_eq!(s["topology"]["master_name"], "autolb");
    }
    let session = shared_session(&a, &b).await;
    wait_fleet(&[&a, &b], 30, "one leader", |s| leaders(s).len() == 1).await;

    let la = Load::start(a.addr("web"), session.clone(), Duration::from_secs(90));
    let lb = Load::start(b.addr("web"), session.clone(), Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = master.addr();
    let killed = Instant::now();
    master.stop();
    let at = promoted(&replica, 60).await;
    let followed = |v: &Value| v["mode"] == "shared" && talking_to(v) == vec![replica.addr()];
    let (sa, sb) = tokio::join!(
        wait_status(&a, 20, "A never followed the failover", followed),
        wait_status(&b, 20, "B never followed the failover", followed),
    );
    eprintln!(
        "promoted {:?} after the kill; both nodes shared again {:?} after the promotion",
        at - killed,
        at.elapsed()
    );
    for s in [&sa, &sb] {
        assert_eq!(s["last_failover"]["from"], old.as_str(), "{s:#}");
        assert_eq!(s["last_failover"]["to"], replica.addr().as_str(), "{s:#}");
        assert!(
            s["last_failover"]["how"]
                .as_str()
                .is_some_and(|h| h.starts_with("sentinel")),
            "{s:#}"
        );
        assert_eq!(s["failovers_total"], 1, "{s:#}");
    }
    wait_fleet(&[&a, &b], 20, "one leader again", |s| {
        leaders(s).len() == 1 && s.iter().flatten().all(|f| f["mode"] == "shared")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, _) = l.finish().await;
        assert!(n > 100, "node {name}: only {n} requests");
    }
    // Shared again: a session learned on B is honoured by A.
    shared_session(&b, &a).await;
    drop(sentinels);
}
