//! Predictive pre-scaling through the real program: every decision says what the
//! prediction wants (here: that it is still learning), `/scaling/status` shows the history,
//! and the learnt shape is kept in a real `redis-server`, so a restarted autolb starts from
//! it. (Whether a learnt daily rise is met ahead of time is shown in virtual time by the
//! unit tests of `autoscale::predict` and by `bench/autoscale-sim`, which drive the same
//! code over days.)

mod common;

use std::time::Duration;

use common::redis::{cli, Redis};
use common::Autolb;
use serde_json::Value;

fn config(redis: &str) -> String {
    let lo = 40_000 + (std::process::id() % 40) * 100;
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: 1
      max: 3
      interval: 300ms
      target: {{ inflight_per_instance: 2 }}
      stop_grace: 2s
      predictive: {{ lookahead: 1m, min_history: 1h }}
state:
  backend: redis
  redis: {{ url: \"{redis}\" }}
",
        echo = common::ECHO,
        hi = lo + 9,
    )
}

async fn pool(lb: &Autolb) -> Value {
    common::get(lb.admin, "/scaling/status").await.json()["pools"][0].clone()
}

#[tokio::test]
async fn decisions_say_what_the_prediction_wants_and_its_history_survives_a_restart() {
    let redis = Redis::start();
    let node = format!("predict-test-{}", std::process::id());
    let env = [("AUTOLB_NODE_ID", node.as_str())];
    let key = format!("autolb:kv:predict:web:{node}");
    let lb = Autolb::start_with_env(&config(&redis.url()), &env);
    let s = common::wait_until(20, "a decision with the prediction's note", || async {
        let s = pool(&lb).await;
        let r = s["last_decision"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (r.starts_with("hold at 1: ") && r.contains("; prediction learning (")).then_some(s)
    })
    .await;
    let r = s["last_decision"]["reason"].as_str().unwrap_or("");
    assert!(
        r.starts_with("hold at 1: ") && r.ends_with(" of 1h history)"),
        "{r}"
    );
    assert_eq!(s["prediction"]["lookahead_seconds"], 60, "{s}");
    assert_eq!(s["prediction"]["min_history_seconds"], 3600, "{s}");
    // Stored in Redis within seconds of the start.
    common::wait_until(20, "the shape in Redis", || async {
        (cli(redis.port, &["EXISTS", &key]).trim() == "1").then_some(())
    })
    .await;
    let ttl: u64 = cli(redis.port, &["TTL", &key]).trim().parse().expect("ttl");
    assert!(ttl > 7 * 86_400, "kept 8 days: {ttl}");
    let learnt = pool(&lb).await["prediction"]["history_seconds"]
        .as_u64()
        .expect("history");
    drop(lb);

    // A new process of the same node loads it: its history goes back to the first start.
    let lb = Autolb::start_with_env(&config(&redis.url()), &env);
    assert!(
        lb.proc.log_shows(
            "prediction: history loaded from the shared state",
            Duration::from_secs(20)
        ),
        "{}",
        lb.proc.log()
    );
    let h = pool(&lb).await["prediction"]["history_seconds"]
        .as_u64()
        .expect("history");
    assert!(
        h >= learnt,
        "history {h}s after the restart, {learnt}s before"
    );
}
