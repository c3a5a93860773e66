//! `bench/run --smoke` runs end to end: every scenario against autolb, HAProxy and nginx with
//! tiny durations, and the balancer micro-benchmarks once each. Nothing about speed is
//! asserted (bench/NOTES.md says why); only that the whole pipeline works.
//!
//! Skipped (with the reason printed) when python3 is missing, or when haproxy, nginx, wrk or
//! h2load are missing and cannot be installed (bench/run exits 77: not root, or no apt-get).
//! `.ci/run` installs them, so CI runs it for real.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the first run also builds the debug binaries and the criterion bench.
const LIMIT: Duration = Duration::from_secs(1200);

#[test]
fn bench_run_smoke_runs_end_to_end() {
    let root = env!("CARGO_MANIFEST_DIR");
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed (bench/run is a python3 script)");
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/bench/run"))
        .arg("--smoke")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; bench/run (and, through its own PDEATHSIG, its
    // children) dies with this test even if the test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start bench/run");
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
            // SIGTERM first: bench/run stops its proxies and backends on the way out.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let Some(status) = status else {
        panic!("bench/run --smoke did not finish within {LIMIT:?}:\n{tail}");
    };
    if status.code() == Some(77) {
        println!("skipped: bench/run --smoke could not get its tools:\n{tail}");
        return;
    }
    assert!(
        status.success(),
        "bench/run --smoke failed ({status}):\n{tail}"
    );
    for scenario in [
        "keepalive",
        "close",
        "https_keepalive",
        "https_handshake",
        "h2",
        "h2c",
        "large",
        "websocket",
        "idle",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(scenario)),
            "no {scenario} row in the medians:\n{tail}"
        );
    }
    println!(
        "bench/run --smoke: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
