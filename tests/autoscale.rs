//! The embedded autoscaler end to end, with real `autolb-echo` instances and short windows.

mod common;

use common::{scaling, wait_scaling};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Autolb, Client};
use serde_json::Value;

const TOKEN: &str = "test-token-123";

/// An autoscaled pool `web` of autolb-echo instances on a free port range.
fn scaled(min: u32, max: u32, extra: &str) -> String {
    let base = port_block();
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\", token_env: AUTOLB_TEST_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    balance: least_conn
    retries: 2
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: {min}
      max: {max}
      interval: 300ms
      target: {{ inflight_per_instance: 2 }}
      scale_down: {{ stabilization: 2s }}
      drain_timeout: 5s
      stop_grace: 2s
{extra}",
        echo = common::ECHO,
        lo = base,
        hi = base + 49,
    )
}

/// A block of 50 ports of its own for each autolb of this test run (below the ephemeral
/// range), so that parallel tests never start instances on the same port.
fn port_block() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32 % 10;
    (10_000 + (std::process::id() % 40) * 500 + n * 50) as u16
}

fn start(yaml: &str) -> Autolb {
    Autolb::start_with_env(yaml, &[("AUTOLB_TEST_TOKEN", TOKEN)])
}

async fn cluster(lb: &Autolb) -> Vec<Value> {
    common::get(lb.admin, "/cluster/status").await.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Keep `workers` clients sending `path` until `stop`; count answers and failures.
fn load(
    addr: std::net::SocketAddr,
    workers: usize,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                let (mut ok, mut failed) = (0, Vec::new());
                // Bounded: at most 5000 requests per worker.
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = c.get(path).await;
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(format!("{} {}", r.status, r.text()));
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test]
async fn load_scales_up_and_back_down_without_losing_requests() {
    let lb = start(&scaled(1, 4, ""));
    wait_scaling(&lb, 20, "one ready instance", |s| s["current"] == 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(lb.addr("web"), 8, "/delay/100", stop.clone());
    let up = wait_scaling(&lb, 20, "scaled up", |s| s["current"].as_u64() >= Some(3)).await;
    assert!(
        up["events"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("inflight_per_instance")),
        "{up}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in tasks {
        let (n, failed) = t.await.expect("load task");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        ok += n;
    }
    assert!(ok > 0);
    // Idle again: back to min after the stabilization window, losing nothing meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let light = load(lb.addr("web"), 1, "/", stop.clone());
    let down = wait_scaling(&lb, 40, "scaled back down", |s| {
        s["current"] == 1 && s["draining"] == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in light {
        let (_, failed) = t.await.expect("light load");
        assert!(
            failed.is_empty(),
            "requests lost during scale-in: {failed:?}"
        );
    }
    let downs = down["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["to"].as_u64() < e["from"].as_u64())
        .count();
    assert!(downs >= 1, "{down}");
    let metrics = common::get(lb.admin, "/metrics").await.text();
    assert!(metrics.contains("autolb_scaling_events_total{pool=\"web\",direction=\"up\"}"));
    assert!(
        metrics.contains("autolb_pool_instances{pool=\"web\",state=\"ready\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_killed_instance_is_replaced_and_counted() {
    let lb = start(&scaled(2, 2, ""));
    wait_scaling(&lb, 20, "two ready", |s| s["current"] == 2).await;
    let before = cluster(&lb).await;
    let victim = before[0].clone();
    let pid = victim["pid"].as_i64().expect("pid") as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    common::wait_until(20, "the killed instance restarted and ready", || async {
        let now = cluster(&lb).await;
        let same = now
            .iter()
            .find(|i| i["id"] == victim["id"])
            .cloned()
            .expect("still managed");
        (same["restarts"] == 1 && same["state"] == "ready" && same["pid"] != victim["pid"])
            .then_some(())
    })
    .await;
    assert!(lb.proc.log().contains("instance exited; restarting"));
    // Its output reaches autolb's log, prefixed with the instance.
    assert!(lb
        .proc
        .log()
        .contains(&format!("instance={}", victim["id"].as_str().expect("id"))));
}

async fn post(lb: &Autolb, token: Option<&str>, body: &str) -> common::Reply {
    let mut c = Client::connect(lb.admin).await;
    let mut b = http::Request::post("/scaling/manual")
        .header("content-type", "application/json")
        .header("host", "admin");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    c.request(
        b.body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request"),
    )
    .await
}

#[tokio::test]
async fn manual_scaling_is_authorized_validated_and_clamped() {
    let lb = start(&scaled(1, 3, ""));
    wait_scaling(&lb, 20, "one ready", |s| s["current"] == 1).await;
    let body = r#"{"pool":"web","instances":99,"reason":"launch day"}"#;
    assert_eq!(post(&lb, None, body).await.status, 401);
    assert_eq!(post(&lb, Some("wrong"), body).await.status, 401);
    let r = post(&lb, Some(TOKEN), body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let j = r.json();
    assert_eq!(j["instances"], 3);
    assert_eq!(j["clamped"], true);
    assert_eq!(j["event"]["to"], 3);
    wait_scaling(&lb, 20, "three ready", |s| s["current"] == 3).await;
    let s = scaling(&lb).await;
    assert!(
        s["manual_hold_seconds"].as_u64().is_some_and(|h| h > 0),
        "{s}"
    );

    for (bad, why) in [
        ("{not json", "invalid JSON"),
        (r#"{"pool":"nope","instances":1}"#, "unknown pool"),
        (r#"{"pool":"web","instances":-1}"#, "non-negative"),
        (r#"{"pool":"web"}"#, "instances"),
    ] {
        let r = post(&lb, Some(TOKEN), bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.json()["error"].as_str().expect("error").contains(why),
            "{bad}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn scale_from_zero_serves_the_first_request() {
    let lb = start(&scaled(0, 2, "      cold_start_timeout: 20s\n"));
    let s = scaling(&lb).await;
    assert_eq!(s["current"], 0, "{s}");
    let r = common::get(lb.addr("web"), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("web-"), "{}", r.text());
}

#[tokio::test]
async fn instances_die_with_autolb_even_after_sigkill() {
    let lb = start(&scaled(2, 2, ""));
    wait_scaling(&lb, 20, "two ready", |s| s["current"] == 2).await;
    let pids: Vec<i32> = cluster(&lb)
        .await
        .iter()
        .map(|i| i["pid"].as_i64().expect("pid") as i32)
        .collect();
    assert_eq!(pids.len(), 2);
    unsafe { libc::kill(lb.proc.pid() as i32, libc::SIGKILL) };
    common::wait_until(10, "the instances to die with autolb", || async {
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = |p: i32| unsafe { libc::kill(p, 0) } == 0 && !zombie(p);
        (!pids.iter().any(|&p| alive(p))).then_some(())
    })
    .await;
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether this machine lets us start a process in a new PID namespace (root, or a
/// container that allows `unshare`).
fn pid_namespaces_work() -> bool {
    std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// As PID 1 of its PID namespace (as in a container), autolb's instances have a parent
/// whose pid is 1: they must still start and serve.
#[tokio::test]
async fn instances_start_when_autolb_is_pid_1() {
    if !pid_namespaces_work() {
        // util-linux's unshare is always installed; what can be missing is the permission
        // to make a PID namespace (an unprivileged container).
        eprintln!("SKIPPED: `unshare --pid --fork` is not permitted here");
        return;
    }
    let lb = Autolb::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        &scaled(1, 1, ""),
        &[("AUTOLB_TEST_TOKEN", TOKEN)],
    );
    wait_scaling(&lb, 20, "one ready instance", |s| s["current"] == 1).await;
    let r = common::get(lb.addr("web"), "/").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), lb.proc.log());
    let instances = cluster(&lb).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(
        instances[0]["restarts"],
        0,
        "{instances:?}\n{}",
        lb.proc.log()
    );
}

/// A pool none of whose instances can start (the program is missing, or exits before it
/// is ready) answers 503 with `Retry-After` at once, not after `cold_start_timeout`, and
/// the log names the program.
#[tokio::test]
async fn a_pool_whose_instances_cannot_start_answers_503_at_once() {
    for (program, shown) in [
        ("autolb-ecko", "cannot run autolb-ecko"),
        ("false", "exit status: 1"),
    ] {
        let yaml = scaled(1, 2, "      cold_start_timeout: 1h\n")
            .replace(&format!("\"{}\"", common::ECHO), &format!("\"{program}\""));
        let lb = start(&yaml);
        let r = tokio::time::timeout(Duration::from_secs(30), common::get(lb.addr("web"), "/"))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{program}: the request waited for an instance that cannot start\n{}",
                    lb.proc.log()
                )
            });
        assert_eq!(r.status, 503, "{program}: {}", r.text());
        assert!(
            r.headers.contains_key("retry-after"),
            "{program}: {:?}",
            r.headers
        );
        assert_eq!(r.json()["error"], "no instance can start", "{program}");
        assert!(
            lb.proc.log_shows(shown, Duration::from_secs(10)),
            "{program}: {}",
            lb.proc.log()
        );
        // Every later request too, while the instances keep failing.
        for _ in 0..5 {
            let r = tokio::time::timeout(Duration::from_secs(30), common::get(lb.addr("web"), "/"))
                .await
                .expect("answered at once");
            assert_eq!(r.status, 503);
        }
    }
}
