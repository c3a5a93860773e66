//! `bench/seed --smoke` runs the seed's load test end to end with small numbers: two autolb
//! nodes sharing one listener (`reuse_port`) and a real `redis-server`, a shared autoscaled
//! pool of four autolb-echo instances (`command` provider), 400 WebSockets held, 200 req/s
//! of open-loop load for 4 s through autolb and 3 s straight to the instances. Nothing about
//! speed is asserted; the run must have no failed request or WebSocket, exactly one lease
//! holder in every sample (and `scale` run by it only), and one sticky cookie honoured by
//! both nodes.
//!
//! Skipped (with the reason printed) when python3 is missing, or when redis-server is missing
//! (bench/seed exits 77); `.ci/run` installs redis-server, so CI runs it for real.

mod common;

use std::time::{Duration, Instant};

/// The run itself takes about 15 s; the first one also builds the two examples.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn bench_seed_smoke_holds_the_fleet_together() {
    let Some(cmd) = common::script::python("bench/seed", &["--smoke"]) else {
        return;
    };
    let started = Instant::now();
    let (status, out) = common::script::run_bounded(cmd, LIMIT);
    let text: String = out
        .lines()
        .filter(|l| !l.starts_with("RESULT "))
        .collect::<Vec<_>>()
        .join("\n");
    let Some(status) = status else {
        panic!("bench/seed --smoke did not finish within {LIMIT:?}:\n{text}");
    };
    if status.code() == Some(77) {
        println!("skipped: bench/seed --smoke could not run:\n{text}");
        return;
    }
    assert!(
        status.success(),
        "bench/seed --smoke failed ({status}):\n{text}"
    );
    let result: serde_json::Value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no RESULT line:\n{text}"));
    let proxied = &result["proxied"];
    assert_eq!(proxied["errors"], 0, "{text}");
    assert_eq!(proxied["ok"], proxied["sent"], "{text}");
    assert_eq!(result["direct"]["errors"], 0, "{text}");
    assert_eq!(result["websockets"], 400, "{text}");
    assert_eq!(result["ws_failed"], 0, "{text}");
    // Both nodes held WebSockets (the kernel spread the connections over the listener's
    // two sockets) and none was dropped while the load ran.
    let per_node: Vec<u64> = result["ws_per_node"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(per_node.len(), 2, "{text}");
    assert_eq!(per_node.iter().sum::<u64>(), 400, "{text}");
    assert!(per_node.iter().all(|&n| n > 0), "{text}");
    assert_eq!(result["ws_after"], result["ws_per_node"], "{text}");
    // The lease: one leader in every sample, the same one, and only it ran `scale`.
    assert!(result["lease_samples"].as_u64().unwrap_or(0) >= 3, "{text}");
    assert_eq!(result["lease_bad"], serde_json::json!([]), "{text}");
    assert_eq!(
        result["leaders"].as_array().map(Vec::len),
        Some(1),
        "{text}"
    );
    assert_eq!(result["scalers"], result["leaders"], "{text}");
    assert!(result["instances"].as_u64().unwrap_or(0) >= 4, "{text}");
    // Stickiness: the cookie's instance answered all 41 requests (bench/seed fails
    // otherwise), served by the nodes listed.
    assert!(result["sticky_backend"].is_string(), "{text}");
    println!(
        "bench/seed --smoke: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
