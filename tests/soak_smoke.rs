//! `bench/soak --smoke`: a few seconds of mixed traffic (keep-alive, new connections, POST
//! bodies, WebSockets, an autoscaled pool) through the test build of autolb while it is
//! reloaded, its backends are killed with -9, its pool is scaled up and down and it is
//! restarted with `--upgrade`. bench/soak exits 0 only when no request failed beyond what
//! the documentation allows (a POST or WebSocket on a killed backend, a WebSocket closed
//! 1001 by a drain); its table is printed.
//!
//! Skipped (with the reason printed) only when python3 is missing.

mod common;

use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn soak_smoke_loses_no_request() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_autolb"))
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    // Ports of its own: bench/run's smoke uses 4300-4340.
    let args = [
        "--smoke",
        "--duration",
        "10",
        "--port-base",
        "4900",
        "--bin-dir",
        &bin_dir,
    ];
    let Some(cmd) = common::script::python("bench/soak", &args) else {
        return;
    };
    let (status, out) = common::script::run_bounded(cmd, LIMIT);
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
