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

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The run itself takes about 15 s; the first one also builds the two examples.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn bench_seed_smoke_holds_the_fleet_together() {
    let root = env!("CARGO_MANIFEST_DIR");
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed (bench/seed is a python3 script)");
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/bench/seed"))
        .arg("--smoke")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; bench/seed (and, through its own PDEATHSIG, its
    // children) dies with this test even if the test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start bench/seed");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            // SIGTERM first: bench/seed stops its nodes, instances and Redis on the way out.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
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
