//! A partition: three autolb nodes reach one real `redis-server`, each through a TCP relay
//! the test controls. The leader of the shared pool loses Redis (its relay stops every byte,
//! connections stay open) while the others keep it: it goes node-local without failing a
//! request, another node takes the lease with a newer fencing token, the stale leader's
//! token is refused, the fleet views mark the lost node unseen; after the heal it is shared
//! again, follows the new leader and is seen again. Never two leaders at once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use autolb::state::SharedState;
use common::redis::Redis;
use common::relay::Relay;
use common::shared::{
    app, leaders, shared_pool, shared_session, token, wait_fleet, wait_status, Load,
};
use common::Autolb;
use serde_json::Value;

fn config(backends: &[SocketAddr], node: u32, redis: SocketAddr) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    sticky: {{ learn_cookie: JSESSIONID }}\n    backends:\n{}{}state:\n  backend: redis\n  redis: {{ url: \"redis://{redis}\" }}\n",
            common::backend_list(backends, ""),
            shared_pool(node, 3),
        ),
    )
}

/// Whether `lb`'s fleet view has node `id`, and if so whether it is seen.
async fn sees(lb: &Autolb, id: &str) -> Option<bool> {
    let c = common::get(lb.admin, "/cluster/status").await.json();
    c["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["seen"].as_bool())
}

async fn wait_sees(lb: &Autolb, id: &str, seen: bool, secs: u64) {
    let d = common::Deadline::after(secs, format!("{id} seen: {seen} in /cluster/status"));
    while sees(lb, id).await != Some(seen) {
        d.tick_or(|| lb.proc.log()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_and_comes_back() {
    let redis = Redis::start();
    let target: SocketAddr = redis.addr().parse().expect("redis addr");
    let relays = [
        Relay::start(target).await,
        Relay::start(target).await,
        Relay::start(target).await,
    ];
    let backends = [app("b0").await, app("b1").await];
    let ids = ["node-0", "node-1", "node-2"];
    let nodes: Vec<Autolb> = (0..3)
        .map(|i| {
            Autolb::start_with_env(
                &config(&backends, i as u32, relays[i].addr),
                &[("AUTOLB_NODE_ID", ids[i])],
            )
        })
        .collect();
    let all: Vec<&Autolb> = nodes.iter().collect();
    let s = wait_fleet(&all, 40, "one leader, everyone shared", |s| {
        leaders(s).len() == 1
            && s.iter()
                .flatten()
                .all(|f| f["mode"] == "shared" && f["desired"] == 3)
    })
    .await;
    let first = leaders(&s)[0].clone();
    let t1 = token(&s);
    let li = ids.iter().position(|i| *i == first).expect("leader index");
    let (lost, others): (&Autolb, Vec<&Autolb>) = (
        &nodes[li],
        (0..3).filter(|i| *i != li).map(|i| &nodes[i]).collect(),
    );
    for o in &others {
        wait_sees(o, &first, true, 10).await;
    }
    for id in ids.iter().filter(|i| **i != first) {
        wait_sees(lost, id, true, 10).await;
    }
    let session = shared_session(lost, others[0]).await;

    let load = Load::start(lost.addr("web"), session.clone(), Duration::from_secs(90));
    let cut = std::time::Instant::now();
    relays[li].cut();
    let down = wait_status(lost, 10, "the cut node never went node-local", |v| {
        v["mode"] == "node-local"
    })
    .await;
    assert!(down["last_error"].is_string(), "{down:#}");
    let local_after = cut.elapsed();
    // Another node leads with a newer token; the lost one does not lead.
    let s = wait_fleet(&all, 15, "a new leader", |s| {
        let l = leaders(s);
        l.len() == 1 && l[0] != first && token(s) > t1
    })
    .await;
    let second = leaders(&s)[0].clone();
    let t2 = token(&s);
    let leader_after = cut.elapsed();
    assert_eq!(
        s[li].as_ref().map(|f| f["mode"].clone()),
        Some("node-local".into())
    );
    // The fleet views: the others no longer see the lost node, and it sees nobody.
    for o in &others {
        wait_sees(o, &first, false, 15).await;
    }
    for id in ids.iter().filter(|i| **i != first) {
        wait_sees(lost, id, false, 10).await;
    }
    // Fencing: a write with the lost leader's token is refused by Redis, and the stored
    // decision stays the new leader's.
    let direct = autolb::state::redis::RedisState::start(&autolb::config::Redis {
        urls: vec![redis.url()],
        sentinel: None,
        tls: None,
        password_env: None,
    })
    .expect("backend");
    common::wait_until(10, "a direct connection", || async {
        direct.connected().then_some(())
    })
    .await;
    let stale = direct
        .put_fenced("autoscale:auto", t1, "{}".into(), Duration::from_secs(60))
        .await;
    assert_eq!(stale.ok(), Some(false), "the stale token was accepted");
    let stored = direct.get_fenced("autoscale:auto").await.ok().flatten();
    let stored: Value = serde_json::from_str(stored.as_deref().unwrap_or("null")).expect("json");
    assert!(stored["token"].as_u64() >= Some(t2), "{stored:#}");
    assert_eq!(stored["leader"], second.as_str());

    let healed = std::time::Instant::now();
    relays[li].heal();
    wait_status(lost, 10, "the healed node never came back", |v| {
        v["mode"] == "shared"
    })
    .await;
    eprintln!(
        "node-local {local_after:?} after the cut, a new leader {leader_after:?} after it; shared again {:?} after the heal",
        healed.elapsed()
    );
    let s = wait_fleet(&all, 15, "the healed node follows", |s| {
        s.iter().flatten().count() == 3
            && s.iter()
                .flatten()
                .all(|f| f["mode"] == "shared" && f["leader"] == second.as_str())
            && token(s) >= t2
    })
    .await;
    assert_eq!(leaders(&s), vec![second.clone()]);
    for o in &others {
        wait_sees(o, &first, true, 10).await;
    }
    for id in ids.iter().filter(|i| **i != first) {
        wait_sees(lost, id, true, 10).await;
    }
    let (n, _) = load.finish().await;
    assert!(n > 100, "only {n} requests");
}
