//! `autolb check` over the shipped configs and over broken ones: every error is reported as
//! FILE:LINE:COL: message, and the exit status says whether any was found.

mod common;

use std::path::{Path, PathBuf};

fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("conf/autolb.yaml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("conf/examples"))
        .expect("conf/examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 7, "one example per algorithm at least");
    files.extend(examples);
    files
}

#[test]
fn every_shipped_config_is_valid() {
    for file in shipped_configs() {
        let (code, out, err) = common::check(&file);
        assert_eq!(code, 0, "{}: {err}", file.display());
        assert!(out.contains(": ok:"), "{out}");
    }
}

#[test]
fn examples_cover_every_algorithm() {
    let all: String = shipped_configs()
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect();
    for alg in [
        "round_robin",
        "weighted_round_robin",
        "least_conn",
        "p2c",
        "peak_ewma",
        "consistent_hash",
        "random",
    ] {
        assert!(
            all.contains(&format!("balance: {alg}")),
            "no example for {alg}"
        );
    }
}

const BROKEN: &str = "threads: 2
admin: { listen: 127.0.0.1:9001 }
listeners:
  - { name: a, listen: 127.0.0.1:8080, protocol: http, pool: web }
  - { name: b, listen: 127.0.0.1:8080, protocol: http, pool: web }
  - { name: c, listen: 127.0.0.1:8081, pool: web, idle_timeout: soon }
routes:
  - { host: api.example.com, pool: apii }
pools:
  web:
    balanse: least_conn
    backends:
      - { address: 127.0.0.1:3001 }
  api:
    backends:
      - { address: 127.0.0.1:3002, weight: 0 }
      - { address: 127.0.0.1:3003, weight: heavy }
  empty: { retries: 1 }
";

#[test]
fn every_error_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 1, "{out}{err}");
    let f = file.display().to_string();
    let expected = [
        // two listeners on one address: at the second one's address
        (5, 24, "already used by listener \"a\""),
        // wrong type (a bad duration): at the value
        (6, 65, "invalid duration \"soon\""),
        // route to an unknown pool: at the pool name
        (8, 36, "unknown pool \"apii\""),
        // unknown key: at the key
        (11, 5, "unknown field \"balanse\""),
        // weight 0
        (16, 44, "weight must be between 1 and 256, got 0"),
        // wrong type
        (17, 44, "got string \"heavy\""),
        // a pool with neither backends nor autoscale
        (18, 3, "no backends and no autoscale"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    for (line, col, needle) in expected {
        let prefix = format!("{f}:{line}:{col}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "no error {prefix}...{needle}... in:\n{err}"
        );
    }
    assert!(err.contains("7 error(s)"), "{err}");
}

#[test]
fn yaml_syntax_errors_and_missing_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("syntax.yaml");
    std::fs::write(&file, "listeners:\n  - { name: a\n").expect("write");
    let (code, _, err) = common::check(&file);
    assert_eq!(code, 1);
    let first = err.lines().next().expect("an error");
    assert!(
        first.starts_with(&format!("{}:2:", file.display())),
        "{err}"
    );

    let (code, _, err) = common::check(&dir.path().join("missing.yaml"));
    assert_eq!(code, 1);
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).expect("write");
    let out = std::process::Command::new(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .expect("run autolb");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("unknown field \"balanse\""), "{log}");
}
