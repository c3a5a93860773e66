//! The quick start (`conf/autolb.yaml`) with the commands its users type, run as written
//! with curl (only the addresses differ: 127.0.0.1:0 ports): the manual scaling command
//! without a pool, every admin endpoint, a reload. Also what the status documents must
//! agree on: one config hash, a generation that counts config changes only, the memory
//! shared state reported as such.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{wait_until, Autolb};
use serde_json::Value;

/// The quick start with test addresses: listeners and admin on 127.0.0.1:0, its instances
/// on a port range of their own, the test build of autolb-echo.
fn quick_start() -> (String, u16) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/autolb.yaml"))
        .expect("conf/autolb.yaml");
    let lo = 27_000 + (std::process::id() % 50) as u16 * 20;
    let adapted = text
        .replace("listen: 127.0.0.1:9001", "listen: \"127.0.0.1:0\"")
        .replace("listen: 0.0.0.0:8080", "listen: \"127.0.0.1:0\"")
        .replace("ports: 3100-3199", &format!("ports: {lo}-{}", lo + 9))
        .replace(
            "command: [autolb-echo,",
            &format!("command: [\"{}\",", common::ECHO),
        );
    for (from, what) in [
        ("listen: 127.0.0.1:9001", "admin"),
        ("listen: 0.0.0.0:8080", "listener"),
        ("3100-3199", "ports"),
        ("[autolb-echo,", "command"),
    ] {
        assert!(
            !adapted.contains(from),
            "the quick start's {what} changed: adapt this test"
        );
    }
    (adapted, lo)
}

/// Run curl with these arguments: (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status"), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `curl http://ADMIN{path}`: 200 and the body.
fn get(admin: SocketAddr, path: &str) -> String {
    let (code, body) = curl(&[&format!("http://{admin}{path}")]);
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

fn reload(admin: SocketAddr) -> Value {
    let url = format!("http://{admin}/config/reload");
    let (code, body) = curl(&["-X", "POST", &url, "-H", "Content-Type: application/json"]);
    assert_eq!(code, 200, "{body}");
    json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_answers_its_commands_as_written() {
    let (yaml, lo) = quick_start();
    let lb = Autolb::start(&yaml);
    let admin = lb.admin;
    let web = lb.addr("web");

    // Its two instances come up and serve.
    wait_until(30, "two ready instances", || async {
        let s = json(&get(admin, "/scaling/status"));
        (s["pools"][0]["current"] == 2).then_some(())
    })
    .await;
    let (code, body) = curl(&[&format!("http://{web}/")]);
    assert_eq!(code, 200);
    assert!(body.starts_with("web-"), "{body}");

    // The manual scaling command, verbatim: no pool (web is the only autoscaled one).
    let url = format!("http://{admin}/scaling/manual");
    let (code, body) = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"instances": 8, "reason": "High traffic expected"}"#,
    ]);
    assert_eq!(code, 202, "{body}");
    let m = json(&body);
    assert_eq!(m["pool"], "web");
    assert_eq!(m["instances"], 8);
    assert_eq!(m["reason"], "High traffic expected");
    wait_until(60, "eight ready instances", || async {
        let s = json(&get(admin, "/scaling/status"));
        (s["pools"][0]["current"] == 8).then_some(())
    })
    .await;

    // Every endpoint, as written.
    let h = json(&get(admin, "/health"));
    assert_eq!(h["status"], "ok");
    assert_eq!(h["pools"][0]["ready"], 8);
    let p = json(&get(admin, "/health/performance"));
    assert!(p["overall"]["requests"].as_u64() >= Some(1), "{p:#}");
    let metrics = get(admin, "/metrics");
    assert!(
        metrics.contains("autolb_pool_instances{pool=\"web\",state=\"ready\"} 8"),
        "{metrics}"
    );
    let c = json(&get(admin, "/cluster/status"));
    let instances = c["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 8, "{c:#}");
    assert!(instances
        .iter()
        .all(|i| i["pid"].is_u64() && i["port"].is_u64()));
    let s = json(&get(admin, "/scaling/status"));
    assert_eq!(s["pools"][0]["desired"], 8);
    let l = json(&get(admin, "/loadbalancer/status"));
    assert_eq!(l["pools"][0]["backends"].as_array().map(Vec::len), Some(8));
    let r = json(&get(admin, "/redis/status"));
    assert_eq!(
        (r["kind"].as_str(), r["mode"].as_str()),
        (Some("memory"), Some("memory"))
    );
    assert!(r["connected"].is_null(), "{r:#}");
    assert_eq!(h["shared_state"]["mode"], "memory");
    let page = get(admin, "/");
    assert!(page.starts_with("<!doctype html>"));

    // One config hash: the file's, in /health and /cluster/status alike.
    let hash = autolb::config::text_hash(&yaml);
    assert_eq!(h["config"]["hash"], hash.as_str());
    assert_eq!(c["fleet"]["config_hash"], hash.as_str());
    // The generation counts config changes only: eight instances came and went through
    // the snapshot, counted apart.
    assert_eq!(h["config"]["generation"], 1);
    assert!(h["updates"]["autoscaler"].as_u64() >= Some(2), "{h:#}");

    // A reload of the same file changes nothing, not even the generation.
    let same = reload(admin);
    assert_eq!(
        (same["generation"].as_u64(), same["config_hash"].as_str()),
        (Some(1), Some(hash.as_str()))
    );
    assert_eq!(same["changes"], serde_json::json!([]));

    // A second autoscaled pool (min 0: nothing starts): the manual command must now name
    // its pool, and the 400 says which.
    let two = format!(
        "{yaml}  batch:\n    autoscale:\n      provider: process\n      command: [\"{}\", --port, \"{{port}}\"]\n      ports: {}-{}\n      min: 0\n      max: 2\n      target: {{ inflight_per_instance: 16 }}\n",
        common::ECHO,
        lo + 10,
        lo + 19
    );
    std::fs::write(&lb.config, &two).expect("write config");
    let changed = reload(admin);
    let new_hash = autolb::config::text_hash(&two);
    assert_eq!(changed["generation"], 2, "{changed:#}");
    assert_eq!(changed["config_hash"], new_hash.as_str());
    let (code, body) = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"instances": 8, "reason": "High traffic expected"}"#,
    ]);
    assert_eq!(code, 400, "{body}");
    let e = json(&body)["error"].as_str().expect("error").to_string();
    assert!(e.contains("web, batch") || e.contains("batch, web"), "{e}");
    let h = json(&get(admin, "/health"));
    assert_eq!(h["config"]["hash"], new_hash.as_str());
    assert_eq!(h["config"]["generation"], 2);
    wait_until(10, "the fleet record follows the reload", || async {
        let c = json(&get(admin, "/cluster/status"));
        (c["fleet"]["config_hash"] == new_hash.as_str()).then_some(())
    })
    .await;
}
