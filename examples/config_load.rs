//! The CPU time of loading a config and building its snapshot, what a reload pays before its
//! swap (issue 30): `config_load FILE [RUNS]` loads FILE RUNS times (default 7) and prints
//! each run's thread CPU milliseconds, then their median and range.
//!
//! ```text
//! cargo build --release --example config_load
//! target/release/examples/config_load /tmp/scale.yaml 9
//! ```
//!
//! bench/scale's `autolb_config(...)` with 10,000 routes and 5,000 idle backends writes the
//! config this was written for (bench/NOTES.md, "Reload at scale").

use std::path::Path;
use std::time::Duration;

use autolb::runtime::{Inputs, Snapshot};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: config_load FILE [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(7);
    let mut load = Vec::new();
    let mut total = Vec::new();
    for _ in 0..runs {
        let start = thread_cpu();
        let cfg = match autolb::tls::config_files::load(Path::new(&path)) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let loaded = thread_cpu();
        let snap = Snapshot::build(&Inputs::new(cfg), None, 1);
        let built = thread_cpu();
        drop(std::hint::black_box(snap));
        load.push(ms(loaded - start));
        total.push(ms(built - start));
        println!(
            "load {:.1} ms, load + snapshot {:.1} ms",
            ms(loaded - start),
            ms(built - start)
        );
    }
    for (name, mut v) in [("load", load), ("load + snapshot", total)] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: median {:.1} ms (min {:.1}, max {:.1}, {} runs)",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            v.len()
        );
    }
}
