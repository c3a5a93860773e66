//! Alerts end to end: a webhook receiver in the test gets autolb's JSON POSTs for backend
//! and pool health, scaling, refused reloads and certificate expiry; failed POSTs are
//! retried; a webhook that hangs never slows the proxy down.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use common::{backend_list, config, hyper_backend, Autolb};

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Post {
    at: Instant,
    headers: http::HeaderMap,
    body: Value,
    answered: u16,
}

/// A webhook receiver: answers 503 to the first `fail_first` POSTs, 200 after.
struct Hook {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Hook {
    async fn start(fail_first: usize) -> Hook {
        let posts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let (p, s) = (posts.clone(), seen.clone());
        let addr = hyper_backend(move |req: http::Request<hyper::body::Incoming>| {
            let (posts, seen) = (p.clone(), s.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let answered = if n < fail_first { 503 } else { 200 };
                posts.lock().expect("posts").push(Post {
                    at: Instant::now(),
                    headers: parts.headers,
                    body,
                    answered,
                });
                let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                *resp.status_mut() = http::StatusCode::from_u16(answered).expect("status");
                resp
            }
        })
        .await;
        Hook { addr, posts }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().expect("posts").clone()
    }

    /// Every alert of the POSTs answered 200, in order.
    fn delivered(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .filter(|p| p.answered == 200)
            .flat_map(|p| p.body["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Wait until an alert matching `pred` was delivered; returns it.
    async fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        common::wait_until_or(
            secs,
            || std::future::ready(self.delivered().into_iter().find(|a| pred(a))),
            || {
                let got: Vec<_> = self.posts().iter().map(|p| p.body.clone()).collect();
                format!("no {what} alert; got {got:#?}")
            },
        )
        .await
    }
}

fn event_is(a: &Value, event: &str) -> bool {
    a["event"] == event
}

/// A backend whose `/health` answers 200 while `healthy`, 503 otherwise.
async fn switchable_backend() -> (SocketAddr, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let addr = hyper_backend(move |_req| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
            if !ok {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
    })
    .await;
    (addr, healthy)
}

#[tokio::test]
async fn backend_and_pool_down_then_up_are_posted_in_batches() {
    let hook = Hook::start(0).await;
    let (backend, healthy) = switchable_backend().await;
    let yaml = config(
        1,
        "",
        &format!(
            "alerts:
  webhook: \"http://{}/hooks/autolb?key=s3cret\"
  batch: 300ms
  token_env: AUTOLB_TEST_HOOK_TOKEN
pools:
  web:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }}
    backends:
{}",
            hook.addr,
            backend_list(&[backend], "")
        ),
    );
    let lb = Autolb::start_with_env(&yaml, &[("AUTOLB_TEST_HOOK_TOKEN", "hook-token")]);

    healthy.store(false, Ordering::SeqCst);
    let down = hook
        .wait_for(10, "pool_down", |a| event_is(a, "pool_down"))
        .await;
    assert_eq!(down["pool"], "web");
    assert_eq!(down["severity"], "critical");
    // The backend_down and the pool_down went out together, in one POST.
    let posts = hook.posts();
    let first = &posts[0];
    let events: Vec<&str> = first.body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["event"].as_str())
        .collect();
    assert_eq!(events, ["backend_down", "pool_down"], "{:#}", first.body);
    assert_eq!(first.body["source"], "autolb");
    assert_eq!(first.body["count"], 2);
    assert!(first.body["text"]
        .as_str()
        .is_some_and(|t| t.contains("is down")));
    let alert = &first.body["alerts"][0];
    assert_eq!(alert["backend"], backend.to_string());
    assert!(
        alert["detail"].as_str().is_some_and(|d| d.contains("503")),
        "{alert}"
    );
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["authorization"], "Bearer hook-token");
    assert!(first.headers["user-agent"]
        .to_str()
        .is_ok_and(|u| u.starts_with("autolb/")));

    healthy.store(true, Ordering::SeqCst);
    hook.wait_for(10, "pool_up", |a| event_is(a, "pool_up"))
        .await;
    hook.wait_for(10, "backend_up", |a| event_is(a, "backend_up"))
        .await;
    assert_eq!(
        hook.delivered()
            .iter()
            .filter(|a| event_is(a, "pool_down"))
            .count(),
        1
    );
    // The query of the URL (a secret) never shows in the log.
    assert!(!lb.proc.log().contains("s3cret"), "{}", lb.proc.log());
}

#[tokio::test]
async fn a_failing_webhook_is_retried_with_backoff_until_it_accepts() {
    let hook = Hook::start(2).await;
    let echo = common::echo("a");
    let yaml = config(
        1,
        "",
        &format!(
            "alerts: {{ webhook: \"http://{}/\", batch: 100ms, backoff: 200ms, retries: 3, events: [reload_failed] }}
pools:
  web:
    backends:
{}",
            hook.addr,
            backend_list(&[echo.addr], "")
        ),
    );
    let lb = Autolb::start(&yaml);
    // A broken config: refused, and alerted.
    std::fs::write(&lb.config, format!("{yaml}  broken: [\n")).expect("write");
    let mut admin = common::Client::connect(lb.admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(admin.request(req).await.status, 400);

    let alert = hook
        .wait_for(15, "reload_failed", |a| event_is(a, "reload_failed"))
        .await;
    assert_eq!(alert["trigger"], "admin");
    let errors = alert["errors"].as_array().expect("errors");
    let config = lb.config.display().to_string();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{config}:")))),
        "FILE:LINE:COL errors: {errors:?}"
    );
    // (The file watcher may refuse the same file once more, in a later POST.)
    let posts = hook.posts();
    let answers: Vec<u16> = posts.iter().take(3).map(|p| p.answered).collect();
    assert_eq!(answers, [503, 503, 200], "two 503s, then the 200");
    assert_eq!(
        posts[0].body["alerts"], posts[2].body["alerts"],
        "the same batch, resent"
    );
    let gaps: Vec<Duration> = posts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(180), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(380), "doubled: {gaps:?}");
    assert!(lb.proc.log().contains("alert webhook failed"));
    // Only the listed events go out.
    assert!(hook
        .delivered()
        .iter()
        .all(|a| event_is(a, "reload_failed")));
}

#[tokio::test]
async fn scaling_and_certificate_alerts_and_the_events_filter() {
    let hook = Hook::start(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::tls::TestCa::new("alerts test CA");
    let (cert, key) = ca
        .issue_with(&["localhost"], true, false)
        .write(dir.path(), "old");
    let base = 27_000 + (std::process::id() % 100) as u16 * 10;
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: secure
    listen: \"127.0.0.1:0\"
    protocol: https
    pool: web
    tls:
      certificates:
        - {{ cert: {cert:?}, key: {key:?} }}
alerts:
  webhook: \"http://{hook}/\"
  batch: 200ms
  events: [scaling, certificate_expiry]
pools:
  web:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: 1
      max: 2
      interval: 300ms
      target: {{ inflight_per_instance: 10 }}
",
        hook = hook.addr,
        echo = common::ECHO,
        lo = base,
        hi = base + 9,
    );
    let _lb = Autolb::start(&yaml);
    let scaled = hook
        .wait_for(10, "scaling", |a| event_is(a, "scaling"))
        .await;
    assert_eq!(
        (
            scaled["pool"].as_str(),
            scaled["from"].as_u64(),
            scaled["to"].as_u64()
        ),
        (Some("web"), Some(0), Some(1))
    );
    assert_eq!(scaled["direction"], "up");
    let expired = hook
        .wait_for(10, "certificate_expiry", |a| {
            event_is(a, "certificate_expiry")
        })
        .await;
    assert_eq!(expired["listener"], "secure");
    assert_eq!(expired["severity"], "critical");
    assert!(expired["certificate"]
        .as_str()
        .is_some_and(|c| c.ends_with("old.crt")));
    assert!(
        expired["summary"]
            .as_str()
            .is_some_and(|s| s.contains("expired on 2020-12-31")),
        "{expired}"
    );
    // The instance came up (a backend_up health event), but only the listed events go out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds: Vec<Value> = hook
        .delivered()
        .iter()
        .map(|a| a["event"].clone())
        .collect();
    assert!(
        kinds
            .iter()
            .all(|k| k == "scaling" || k == "certificate_expiry"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_hanging_webhook_never_slows_the_proxy() {
    // Accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let (flappy, healthy) = switchable_backend().await;
    let steady = common::echo("steady");
    let yaml = config(
        1,
        "",
        &format!(
            "alerts: {{ webhook: \"http://{hang_addr}/\", batch: 50ms, timeout: 30s, retries: 20 }}
pools:
  web:
    balance: round_robin
    health_check: {{ type: http, path: /health, interval: 50ms, timeout: 50ms, rise: 1, fall: 1 }}
    backends:
{}",
            backend_list(&[flappy, steady.addr], "")
        ),
    );
    let lb = Autolb::start(&yaml);
    // Health flaps: alerts pile up behind the hanging webhook.
    let flapper = {
        let healthy = healthy.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                healthy.store(i % 2 == 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let mut client = common::Client::connect(lb.addr("web")).await;
    let started = Instant::now();
    for _ in 0..200 {
        let r = client.get("/").await;
        assert!(r.status == 200 || r.status == 503, "{}", r.status);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "200 requests took {:?}",
        started.elapsed()
    );
    flapper.await.expect("flapper");
    // And SIGTERM still stops autolb promptly.
    let pid = lb.proc.pid() as i32;
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let mut lb = lb;
    let status = lb.proc.exited(10).await;
    assert!(status.success(), "{status:?}");
}
