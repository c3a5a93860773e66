//! Shared-state faults under load, with real `redis-server` processes (free loopback ports,
//! killed when the test ends) and two autolb processes using every request-path feature that
//! touches the shared state (a cluster rate limit, learned sticky sessions): a slow Redis
//! (SIGSTOP, then SIGCONT) and a stopped Redis Cluster node (then restarted). No request
//! fails or waits past a bound, `/redis/status` shows the degradation, and recovery is
//! automatic.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{cli, free_port, Redis};
use common::{Autolb, Client};
use http_body_util::Full;
use serde_json::Value;

/// No request may take this long, whatever Redis does (calls are bounded by 250 ms).
const BOUND: Duration = Duration::from_secs(1);

/// An application backend: answers its name and starts a session (`JSESSIONID`) for a
/// request without one.
async fn app(name: &'static str) -> SocketAddr {
    let n = Arc::new(AtomicU64::new(0));
    common::hyper_backend(move |req| {
        let n = n.clone();
        async move {
            let has = req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("JSESSIONID="));
            let mut r = http::Response::new(Full::new(Bytes::from(name)));
            if !has {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let cookie = format!("JSESSIONID={name}-{i}; Path=/");
                r.headers_mut().insert(
                    http::header::SET_COOKIE,
                    http::HeaderValue::from_str(&cookie).expect("cookie"),
                );
            }
            r
        }
    })
    .await
}

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

async fn status(lb: &Autolb) -> Value {
    common::get(lb.admin, "/redis/status").await.json()
}

/// Polls `lb`'s `/redis/status` until `cond`, for at most `secs`.
async fn wait_status(lb: &Autolb, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = status(lb).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {v:#}\n{}",
            lb.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A session started through `lb`: (cookie value, backend that owns it).
async fn new_session(addr: SocketAddr) -> (String, String) {
    let r = Client::connect(addr).await.get("/").await;
    assert_eq!(r.status, 200);
    let (pair, _) = common::set_cookie(&r.headers, "JSESSIONID").expect("JSESSIONID");
    (pair["JSESSIONID=".len()..].to_string(), r.text())
}

async fn get_session(c: &mut Client, session: &str) -> common::Reply {
    c.get_with("/", &[("cookie", &format!("JSESSIONID={session}"))])
        .await
}

/// Load on `addr` until `until`: requests of the known `session` (must stay on `owner`),
/// new sessions, and unknown sessions (a Redis lookup each). Every request must answer 200
/// within `BOUND`. Returns (requests, slowest).
fn load(
    addr: SocketAddr,
    session: (String, String),
    until: Instant,
) -> tokio::task::JoinHandle<(u64, Duration)> {
    tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let (mut n, mut slowest) = (0u64, Duration::ZERO);
        while Instant::now() < until {
            let t = Instant::now();
            let r = match n % 3 {
                0 => get_session(&mut c, &session.0).await,
                1 => c.get("/").await,
                _ => get_session(&mut c, &format!("unknown-{addr}-{n}")).await,
            };
            let took = t.elapsed();
            assert_eq!(r.status, 200, "request {n} failed: {}", r.text());
            assert!(took < BOUND, "request {n} took {took:?}");
            if n.is_multiple_of(3) {
                assert_eq!(r.text(), session.1, "request {n}: the session moved");
            }
            slowest = slowest.max(took);
            n += 1;
        }
        (n, slowest)
    })
}

/// Both nodes connected; a session learned on `a` and honoured by `b`.
async fn shared_session(a: &Autolb, b: &Autolb) -> (String, String) {
    for lb in [a, b] {
        wait_status(lb, 15, "never connected", |v| v["connected"] == true).await;
    }
    let session = new_session(a.addr("web")).await;
    let mut c = Client::connect(b.addr("web")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_session(&mut c, &session.0).await.text() != session.1 {
        assert!(
            Instant::now() < deadline,
            "node B never honoured {session:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session
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
    let la = load(a.addr("web"), session.clone(), until);
    let lb = load(b.addr("web"), session.clone(), until);
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
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, slowest) = l.await.expect("load");
        assert!(n > 50, "node {name}: only {n} requests");
        assert!(slowest < BOUND, "node {name}: {slowest:?}");
    }
    // Shared again: a new session learned on B is honoured by A.
    let s2 = shared_session(&b, &a).await;
    assert!(!s2.0.is_empty());
}

#[tokio::test]
async fn a_stopped_cluster_node_fails_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().display().to_string();
    let mut masters = Vec::new();
    for _ in 0..3 {
        let bus = free_port();
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-config-file",
            &format!("nodes-{bus}.conf"),
            "--cluster-node-timeout",
            "1000",
            "--dir",
            &dir_arg,
        ]
        .map(String::from)
        .to_vec();
        masters.push(Redis::start_with(extra));
    }
    let addrs: Vec<String> = masters
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cluster_ok = |masters: &[Redis]| {
        masters
            .iter()
            .all(|m| cli(m.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cluster_ok(&masters) {
        assert!(Instant::now() < deadline, "cluster never became ok");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let la = load(a.addr("web"), session.clone(), until);
    let lb = load(b.addr("web"), session.clone(), until);
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster_ok(&masters) {
        assert!(Instant::now() < deadline, "cluster never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, l) in [("A", la), ("B", lb)] {
        let (n, slowest) = l.await.expect("load");
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
    drop(masters);
}
