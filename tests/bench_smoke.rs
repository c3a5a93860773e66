//! `bench/run --smoke` runs end to end: every scenario against autolb, HAProxy and nginx
//! (the cache scenarios against Varnish and nginx, HTTP/3 against Caddy with the
//! `h3_load` example as client; the TCP-mode ones and the 2-thread one included) with tiny durations, and the
//! balancer micro-benchmarks once each, and writes its SVG chart. Nothing about speed is
//! asserted (bench/NOTES.md says why); only that the whole pipeline works.
//!
//! Skipped (with the reason printed) when python3 is missing, or when haproxy, nginx, wrk,
//! h2load, varnish or caddy are missing and cannot be installed (bench/run exits 77: not root, or no apt-get).
//! `.ci/run` installs them, so CI runs it for real.

mod common;

use std::time::{Duration, Instant};

/// Generous: the first run also builds the debug binaries and the criterion bench.
const LIMIT: Duration = Duration::from_secs(1200);

#[test]
fn bench_run_smoke_runs_end_to_end() {
    let Some(cmd) = common::script::python("bench/run", &["--smoke"]) else {
        return;
    };
    let started = Instant::now();
    let (status, out) = common::script::run_bounded(cmd, LIMIT);
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
        "cache_hit",
        "cache_zipf",
        "cache_memory",
        "tcp_1m",
        "tcp_64k",
        "tcp_short",
        "keepalive_2t",
        "h3",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(scenario)),
            "no {scenario} row in the medians:\n{tail}"
        );
    }
    // The chart beside the results: a bar per ratio, the TCP-mode rows among them.
    let chart = out
        .lines()
        .find_map(|l| l.strip_prefix("wrote chart "))
        .unwrap_or_else(|| panic!("no chart written:\n{tail}"));
    let svg = std::fs::read_to_string(chart.trim()).expect("the chart is readable");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    for row in [
        "keepalive: requests/s",
        "tcp_1m: MB/s",
        "x HAProxy",
        "x nginx",
    ] {
        assert!(svg.contains(row), "no {row:?} in the chart");
    }
    println!(
        "bench/run --smoke: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
