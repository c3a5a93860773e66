//! Autoscaling on signals from systems users already run, through the real `autolb`: a
//! queue's length on a real `redis-server` (`target.redis_list`) and a PromQL query against
//! a real Prometheus server scraping a gauge this test sets (`target.prometheus`). Both are
//! held per instance; when the source goes away, the size holds and `/scaling/status` says
//! the source is degraded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::redis::{cli, free_port, Redis};
use common::{Autolb, Proc};
use http_body_util::Full;
use serde_json::Value;

fn pool_yaml(base: u16, target: &str, extra: &str) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
{extra}listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: workers }}
pools:
  workers:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {base}-{hi}
      min: 0
      max: 6
      interval: 200ms
      target: {target}
      scale_up: {{ max_step: 6 }}
      scale_down: {{ stabilization: 1s, max_step: 6 }}
      drain_timeout: 1s
",
        echo = common::ECHO,
        hi = base + 39,
    )
}

async fn pool_status(lb: &Autolb) -> Value {
    common::get(lb.admin, "/scaling/status").await.json()["pools"][0].clone()
}

/// Wait until the pool's status satisfies `f` (within `secs`), and return it.
async fn wait_pool(lb: &Autolb, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    common::wait_until(secs, what, || async {
        let s = pool_status(lb).await;
        f(&s).then_some(s)
    })
    .await
}

/// The size holds while the source is gone: several decisions say so, none scales in.
async fn holds(lb: &Autolb, source: &str, size: u64) {
    let s = wait_pool(lb, 20, "the source to be degraded", |s| {
        s["external"][source]["degraded"] == true
            && s["last_decision"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("{source} has no data: holds {size}")))
    })
    .await;
    assert!(s["external"][source]["error"].is_string(), "{s:#}");
    let failures = s["external"][source]["failures_total"]
        .as_u64()
        .unwrap_or(0);
    // Three more failed reads (600 ms of decisions at 200 ms), still the same size.
    let s = wait_pool(lb, 20, "more failed reads", |s| {
        s["external"][source]["failures_total"]
            .as_u64()
            .unwrap_or(0)
            >= failures + 3
    })
    .await;
    assert_eq!(s["desired"], size, "{s:#}");
    assert_eq!(s["current"], size, "{s:#}");
}

#[tokio::test]
async fn a_redis_queue_sizes_the_pool_and_an_outage_holds_it() {
    let mut redis = Redis::start();
    let base = 23_000 + (std::process::id() % 100) as u16 * 40;
    let state = format!(
        "state: {{ backend: redis, redis: {{ url: \"{}\" }} }}\n",
        redis.url()
    );
    let lb = Autolb::start(&pool_yaml(
        base,
        "{ redis_list: { key: \"jobs:pending\", per_instance: 5 } }",
        &state,
    ));
    // An empty queue: nothing runs (min 0); the source is read.
    let s = wait_pool(&lb, 20, "the queue to be read", |s| {
        s["external"]["redis_list"]["value"] == 0.0
    })
    .await;
    assert_eq!(s["current"], 0, "{s:#}");
    assert_eq!(s["external"]["redis_list"]["key"], "jobs:pending");

    // 12 jobs at 5 per instance: from zero to 3 (the first start, then the formula).
    let mut args = vec!["RPUSH", "jobs:pending"];
    args.extend(["job"; 12]);
    assert_eq!(cli(redis.port, &args).trim(), "12");
    wait_pool(&lb, 30, "3 ready instances for 12 jobs", |s| {
        s["current"] == 3 && s["desired"] == 3
    })
    .await;

    // Redis goes away: degraded, the size holds.
    redis.stop();
    holds(&lb, "redis_list", 3).await;

    // Back, with the queue drained: the pool scales in to zero.
    redis.restart();
    let s = wait_pool(&lb, 30, "scale-in once the queue is empty", |s| {
        s["desired"] == 0 && s["external"]["redis_list"]["degraded"] == false
    })
    .await;
    assert!(s["external"]["redis_list"]["error"].is_null(), "{s:#}");
}

/// A Prometheus server scraping `target` every 500 ms, on a free port; killed on drop.
struct Prometheus {
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        if std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            // .ci/run installs it (Debian's prometheus package).
            eprintln!("SKIP: prometheus is not installed and cannot be installed here");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 500ms, evaluation_interval: 500ms }}\n\
                 scrape_configs:\n  - job_name: queue\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = common::command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus");
        Some(Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _proc: Proc {
                child,
                log: Default::default(),
            },
            _dir: dir,
        })
    }
}

#[tokio::test]
async fn a_promql_query_sizes_the_pool_and_an_outage_holds_it() {
    // What Prometheus scrapes: a gauge this test sets.
    let depth = Arc::new(AtomicU64::new(0));
    let gauge = depth.clone();
    let exporter = common::hyper_backend(move |_req| {
        let v = gauge.load(Ordering::SeqCst);
        async move {
            http::Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(format!(
                    "# TYPE work_in_queue gauge\nwork_in_queue {v}\n"
                ))))
                .expect("response")
        }
    })
    .await;
    let Some(prom) = Prometheus::start(exporter) else {
        return;
    };
    let base = 24_000 + (std::process::id() % 100) as u16 * 40;
    let target = format!(
        "{{ prometheus: {{ url: \"{}\", query: \"sum(work_in_queue{{job=\\\"queue\\\"}})\", per_instance: 10, timeout: 1s }} }}",
        prom.url
    );
    let lb = Autolb::start(&pool_yaml(base, &target, ""));
    // Until Prometheus has scraped once the query answers an empty vector (0).
    wait_pool(&lb, 30, "the query to answer", |s| {
        s["external"]["prometheus"]["value"] == 0.0
    })
    .await;
    depth.store(25, Ordering::SeqCst);
    let s = wait_pool(&lb, 30, "3 ready instances for 25 queued", |s| {
        s["current"] == 3 && s["desired"] == 3
    })
    .await;
    assert_eq!(s["external"]["prometheus"]["value"], 25.0, "{s:#}");
    assert!(
        s["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("prometheus")),
        "{s:#}"
    );

    // Prometheus goes away: degraded, the size holds.
    drop(prom);
    holds(&lb, "prometheus", 3).await;
}

#[test]
fn external_targets_are_checked_with_their_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |target: &str| {
        let path = dir.path().join("autolb.yaml");
        std::fs::write(&path, pool_yaml(25_000, target, "")).expect("write");
        let (code, _out, err) = common::check(&path);
        assert_ne!(code, 0);
        err
    };
    let err = check("{ prometheus: { url: \"ftp://prom\", query: \" \", per_instance: 0 } }");
    for want in [
        "autolb.yaml:14:36: invalid target.prometheus.url \"ftp://prom\": expected an http:// or https:// URL",
        "autolb.yaml:14:57: target.prometheus.query must not be empty",
        "autolb.yaml:14:76: target.prometheus.per_instance must be a number greater than 0",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    let err = check("{ redis_list: { key: jobs, per_instance: 2 } }");
    let want = "autolb.yaml:14:29: target.redis_list reads the shared-state Redis: it needs state.backend: redis";
    assert!(err.contains(want), "{want:?} not in:\n{err}");
}
