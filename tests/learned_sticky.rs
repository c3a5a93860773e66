//! Learned stickiness (`sticky: {learn_cookie: JSESSIONID}`) across two autolb processes
//! sharing a real `redis-server` (started on a free loopback port, killed when the test
//! ends): a session the application set through node A is routed to the same backend by
//! node B, and redispatched (then re-bound, on both nodes) when that backend goes down.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::redis::{cli, Redis};
use common::{Autolb, Client};
use http_body_util::Full;

/// An application backend named `name`: answers its name, and starts a session
/// (`JSESSIONID=name-N`) for a request without one. `down`: its health check fails.
async fn app(name: &'static str, down: Arc<AtomicBool>) -> SocketAddr {
    let sessions = Arc::new(AtomicU64::new(0));
    common::hyper_backend(move |req| {
        let (down, sessions) = (down.clone(), sessions.clone());
        async move {
            if req.uri().path() == "/health" && down.load(Ordering::Relaxed) {
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"down")));
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            let has = req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("JSESSIONID="));
            let mut r = http::Response::new(Full::new(Bytes::from(name)));
            if !has {
                let n = sessions.fetch_add(1, Ordering::Relaxed);
                let cookie = format!("JSESSIONID={name}-{n}; Path=/; HttpOnly");
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

async fn served_by(c: &mut Client, session: &str) -> String {
    let cookie = format!("a=1; JSESSIONID={session}");
    let r = c.get_with("/", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test]
async fn sessions_learned_on_one_node_are_honoured_by_another() {
    let redis = Redis::start();
    let port = redis.port;
    let names = ["b0", "b1", "b2"];
    let down: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
    let mut addrs = Vec::new();
    for (name, d) in names.iter().zip(&down) {
        addrs.push(app(name, d.clone()).await);
    }
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    balance: round_robin\n    sticky: {{ learn_cookie: JSESSIONID, learn_ttl: 10m }}\n    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}\n    backends:\n{}state:\n  backend: redis\n  redis: {{ url: \"redis://127.0.0.1:{port}\" }}\n",
            common::backend_list(&addrs, "")
        ),
    );
    let a = Autolb::start(&yaml);
    let b = Autolb::start(&yaml);
    for lb in [&a, &b] {
        common::wait_until(10, "redis connected", || async {
            let s = common::get(lb.admin, "/redis/status").await.json();
            (s["connected"] == true).then_some(())
        })
        .await;
    }
    let mut ca = Client::connect(a.addr("web")).await;
    let mut cb = Client::connect(b.addr("web")).await;

    // Without a session, node B balances over every backend.
    let spread: BTreeSet<String> = {
        let mut s = BTreeSet::new();
        for _ in 0..9 {
            s.insert(cb.get("/").await.text());
        }
        s
    };
    assert_eq!(spread.len(), 3, "{spread:?}");

    // Node A sees the application start a session on some backend.
    let first = ca.get("/").await;
    assert_eq!(first.status, 200);
    let (pair, _) = common::set_cookie(&first.headers, "JSESSIONID").expect("JSESSIONID");
    let session = pair["JSESSIONID=".len()..].to_string();
    let owner = first.text();
    assert!(session.starts_with(&owner), "{session} from {owner}");

    // Node B learns it through Redis (stored in the background: wait for it), then every
    // request of the session goes there, on both nodes.
    let d = common::Deadline::after(5, "node B to honour the session");
    while served_by(&mut cb, &session).await != owner {
        d.tick().await;
    }
    for _ in 0..20 {
        assert_eq!(served_by(&mut cb, &session).await, owner);
        assert_eq!(served_by(&mut ca, &session).await, owner);
    }
    // Ten sessions were started (nine above on node B, one on node A), each stored once.
    let keys = cli(port, &["--scan", "--pattern", "autolb:kv:sticky:web:*"]);
    assert_eq!(keys.lines().count(), 10, "{keys}");
    let key = keys.lines().next().unwrap_or_default();
    let ttl: i64 = cli(port, &["PTTL", key]).trim().parse().expect("ttl");
    assert!(ttl > 500_000 && ttl <= 600_000, "{ttl}");

    // The owner goes down: the session is redispatched (no failure) and re-bound to the
    // backend that took it; the nodes converge on one binding (within the cache recheck).
    let i = names.iter().position(|n| *n == owner).expect("owner");
    down[i].store(true, Ordering::Relaxed);
    let d = common::Deadline::after(10, "the nodes to agree on a new backend");
    let moved = loop {
        let (x, y) = (
            served_by(&mut ca, &session).await,
            served_by(&mut cb, &session).await,
        );
        if x == y && x != owner {
            break x;
        }
        d.tick().await;
    };
    for _ in 0..10 {
        assert_eq!(served_by(&mut ca, &session).await, moved);
        assert_eq!(served_by(&mut cb, &session).await, moved);
    }
    let status = common::get(b.admin, "/redis/status").await.json();
    assert_eq!(status["mode"], "shared", "{status:#}");
}
