//! Helpers of the shared-state tests: an application backend with sessions, load that
//! fails on any non-200 or slow answer, learned sessions, and polling `/redis/status` and
//! `/scaling/status` of several autolb nodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use super::{Autolb, Client, Reply};

/// No request may take this long, whatever Redis does (calls are bounded by 250 ms).
pub const BOUND: Duration = Duration::from_secs(1);

/// An application backend: answers its name and starts a session (`JSESSIONID`) for a
/// request without one.
pub async fn app(name: &'static str) -> SocketAddr {
    let n = Arc::new(AtomicU64::new(0));
    super::hyper_backend(move |req| {
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

pub async fn status(lb: &Autolb) -> Value {
    super::get(lb.admin, "/redis/status").await.json()
}

/// Polls `lb`'s `/redis/status` until `cond`, for at most `secs`.
pub async fn wait_status(
    lb: &Autolb,
    secs: u64,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    super::wait_for_value(
        secs,
        || status(lb),
        cond,
        |v| format!("{what}: {v:#}\n{}", lb.proc.log()),
    )
    .await
}

/// A session started through `addr`: (cookie value, backend that owns it).
pub async fn new_session(addr: SocketAddr) -> (String, String) {
    let r = Client::connect(addr).await.get("/").await;
    assert_eq!(r.status, 200);
    let (pair, _) = super::set_cookie(&r.headers, "JSESSIONID").expect("JSESSIONID");
    (pair["JSESSIONID=".len()..].to_string(), r.text())
}

pub async fn get_session(c: &mut Client, session: &str) -> Reply {
    c.get_with("/", &[("cookie", &format!("JSESSIONID={session}"))])
        .await
}

/// Load on one listener until `stop` (or `limit`, or a million requests): requests of the
/// known `session` (must stay on its owner), new sessions, and unknown sessions (a shared
/// state lookup each). Every request must answer 200 within `BOUND`.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Duration)>,
}

impl Load {
    pub fn start(addr: SocketAddr, session: (String, String), limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let until = Instant::now() + limit;
        let task = tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let (mut n, mut slowest) = (0u64, Duration::ZERO);
            while !flag.load(Ordering::Relaxed) && Instant::now() < until && n < 1_000_000 {
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
        });
        Load { stop, task }
    }

    /// Stops it: (requests, slowest); panics if a request failed.
    pub async fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load")
    }
}

/// Both nodes connected; a session learned on `a` and honoured by `b`.
pub async fn shared_session(a: &Autolb, b: &Autolb) -> (String, String) {
    for lb in [a, b] {
        wait_status(lb, 20, "never connected", |v| v["connected"] == true).await;
    }
    let session = new_session(a.addr("web")).await;
    let mut c = Client::connect(b.addr("web")).await;
    let d = super::Deadline::after(5, format!("node B to honour {session:?}"));
    while get_session(&mut c, &session.0).await.text() != session.1 {
        d.tick().await;
    }
    session
}

/// A pool `auto` of autolb-echo instances scaled by one leader for the fleet (min 1 per
/// node), on a port range of its own per node.
pub fn shared_pool(node: u32, nodes: u32) -> String {
    let lo = 21000 + (std::process::id() % 250) * 36 + node * 12;
    format!(
        "  auto:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      shared: true
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: {nodes}
      max: {max}
      interval: 500ms
      target: {{ inflight_per_instance: 1000 }}
      scale_down: {{ stabilization: 1s }}
      drain_timeout: 1s
      stop_grace: 1s
",
        echo = super::ECHO,
        hi = lo + 11,
        max = nodes * 2,
    )
}

/// Pool `auto`'s `fleet` part of `/scaling/status` (None when the node does not answer).
pub async fn fleet(lb: &Autolb) -> Option<Value> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        super::get(lb.admin, "/scaling/status"),
    )
    .await
    .ok()?;
    r.json()["pools"]
        .as_array()?
        .iter()
        .find(|p| p["pool"] == "auto" || p["name"] == "auto")
        .map(|p| p["fleet"].clone())
}

/// The nodes' `fleet` views, polled until `cond`; asserts at most one leader in every
/// sample. Returns the last sample.
pub async fn wait_fleet(
    nodes: &[&Autolb],
    secs: u64,
    what: &str,
    cond: impl Fn(&[Option<Value>]) -> bool,
) -> Vec<Option<Value>> {
    super::wait_for_value(
        secs,
        || async {
            let mut s = Vec::new();
            for n in nodes {
                s.push(fleet(n).await);
            }
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

/// The ids of the nodes that say they lead.
pub fn leaders(s: &[Option<Value>]) -> Vec<String> {
    s.iter()
        .flatten()
        .filter(|v| v["is_leader"] == true)
        .filter_map(|v| v["node_id"].as_str().map(String::from))
        .collect()
}

/// The newest fencing token any node has seen.
pub fn token(s: &[Option<Value>]) -> u64 {
    s.iter()
        .flatten()
        .filter_map(|v| v["fencing_token"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A metric's value in `/metrics` (the first line starting with `sample`).
pub async fn metric(lb: &Autolb, sample: &str) -> Option<f64> {
    let text = super::get(lb.admin, "/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(sample))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
