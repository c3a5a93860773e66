//! `bench/soak --smoke`: a few seconds of mixed traffic (keep-alive, new connections, POST
//! bodies, WebSockets, an autoscaled pool) through the test build of autolb while it is
//! reloaded, its backends are killed with -9, its pool is scaled up and down and it is
//! restarted with `--upgrade`. bench/soak exits 0 only when no request failed beyond what
//! the documentation allows (a POST or WebSocket on a killed backend, a WebSocket closed
//! 1001 by a drain); its table is printed.
//!
//! Skipped (with the reason printed) only when python3 is missing.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn soak_smoke_loses_no_request() {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed (bench/soak is a python3 script)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_autolb"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    // Ports of its own: bench/run's smoke uses 4300-4340.
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/bench/soak"))
        .args([
            "--smoke",
            "--duration",
            "10",
            "--port-base",
            "4900",
            "--bin-dir",
        ])
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; bench/soak (and through its own PDEATHSIG its
    // children) dies with this test even if the test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start bench/soak");
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
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    println!("{out}");
    let status = status.unwrap_or_else(|| panic!("bench/soak did not finish in {LIMIT:?}:\n{out}"));
    assert!(
        status.success(),
        "bench/soak --smoke failed ({status}):\n{out}"
    );
    // Every kind of event happened, and traffic of every kind was answered.
    for event in ["kill", "reload", "scale_up", "scale_down", "upgrade"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("| events |") && l.contains(&format!("{event} "))),
            "no {event} event:\n{out}"
        );
    }
    assert!(out.contains("| failed | 0 |"), "{out}");
    for kind in ["autoscaled", "keepalive", "new_conn", "post", "websocket"] {
        assert!(
            out.contains(&format!("{kind} ")),
            "no {kind} traffic:\n{out}"
        );
    }
}
