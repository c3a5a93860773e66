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

fn run_check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(common::AUTOLB)
        .arg("check")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run autolb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_takes_the_file_positionally_or_with_c_and_q_keeps_only_errors() {
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/autolb.yaml");
    let good = good.to_str().expect("utf-8");
    for args in [&[good][..], &["-c", good]] {
        let (code, out, err) = run_check(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains(": ok:"), "{out}");
    }
    let (code, out, err) = run_check(&["-q", good], &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, BROKEN).expect("write");
    let bad = bad.to_str().expect("utf-8");
    let (code, out, err) = run_check(&["-q", "-c", bad], &[]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 7, "only the errors:\n{err}");
    // Two files, or none, is a usage error.
    assert_eq!(run_check(&[good, "-c", good], &[]).0, 2);
    assert_eq!(run_check(&[], &[]).0, 2);
}

#[test]
fn a_missing_file_is_named_as_resolved_without_a_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::AUTOLB)
        .args(["check", "nowhere.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let resolved = dir.path().join("nowhere.yaml");
    assert!(
        err.starts_with(&format!(
            "{}: cannot read the config file: No such file or directory",
            resolved.display()
        )),
        "{err}"
    );
    assert!(!err.contains(":0:0"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn check_reports_an_unset_token_variable_as_run_refuses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token.yaml");
    std::fs::write(
        &file,
        "admin:
  listen: 127.0.0.1:9001
  token_env: AUTOLB_TEST_UNSET_TOKEN
listeners: [ { name: a, listen: 127.0.0.1:8080, pool: web } ]
pools: { web: { backends: [ { address: 127.0.0.1:3001 } ] } }
",
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let (code, _, err) = run_check(&[f], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{f}:3:14: admin.token_env names AUTOLB_TEST_UNSET_TOKEN"
        )),
        "{err}"
    );
    // An empty value is refused by run as well.
    assert_eq!(run_check(&[f], &[("AUTOLB_TEST_UNSET_TOKEN", " ")]).0, 1);
    let (code, out, err) = run_check(&[f], &[("AUTOLB_TEST_UNSET_TOKEN", "s3cret")]);
    assert_eq!(code, 0, "{out}{err}");
    // And run agrees.
    let run = std::process::Command::new(common::AUTOLB)
        .args(["run", "-c", f])
        .env("TMPDIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("AUTOLB_TEST_UNSET_TOKEN"));
}

fn autoscale_config(command: &str, extra: &str) -> String {
    format!(
        "listeners: [ {{ name: a, listen: 127.0.0.1:8080, pool: web }} ]
pools:
  web:
    autoscale:
      command: [{command}, --port, \"{{port}}\"]
      ports: 3100-3109
      max: 2
      target: {{ inflight_per_instance: 10 }}
{extra}"
    )
}

#[test]
fn check_reports_an_autoscale_program_it_cannot_find() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("scale.yaml");
    let f = file.to_str().expect("utf-8");
    // A typo: neither beside autolb nor on PATH.
    std::fs::write(&file, autoscale_config("autolb-ecko", "")).expect("write");
    let (code, _, err) = run_check(&[f], &[]);
    assert_eq!(code, 1);
    let bin = Path::new(common::AUTOLB).parent().expect("bin dir");
    assert!(
        err.contains(&format!("{f}:5:17: pool \"web\": autoscale command: program \"autolb-ecko\" not found beside autolb ({})", bin.display())),
        "{err}"
    );
    // autolb-echo sits beside autolb.
    std::fs::write(&file, autoscale_config("autolb-echo", "")).expect("write");
    let (code, _, err) = run_check(&[f], &[]);
    assert_eq!(code, 0, "{err}");
    // A program on PATH is found there ...
    std::fs::write(&file, autoscale_config("sh", "")).expect("write");
    assert_eq!(run_check(&[f], &[]).0, 0);
    // ... and not when PATH does not have it.
    let (code, _, err) = run_check(&[f], &[("PATH", dir.path().to_str().expect("utf-8"))]);
    assert_eq!(code, 1);
    assert!(err.contains("program \"sh\" not found"), "{err}");
    // A path resolves against the instances' cwd; it must be an executable file.
    let app = dir.path().join("app");
    std::fs::write(&app, "#!/bin/sh\n").expect("write");
    std::fs::write(
        &file,
        autoscale_config("./app", &format!("      cwd: {:?}\n", dir.path())),
    )
    .expect("write");
    let (code, _, err) = run_check(&[f], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("app is not executable"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, _, err) = run_check(&[f], &[]);
    assert_eq!(code, 0, "{err}");
}

/// Runs `autolb check FILE` as an unprivileged user: root reads every file.
fn check_as_nobody(file: &Path) -> Option<(i32, String)> {
    // SAFETY: geteuid only reads the process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::AUTOLB,
        ]);
        c
    } else {
        std::process::Command::new(common::AUTOLB)
    };
    let out = cmd.arg("check").arg(file).output().ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn check_reports_certificate_files_the_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ca = common::tls::TestCa::new("check CA");
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "site");
    for f in [&cert, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let file = dir.path().join("tls.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:
  - name: s
    listen: 127.0.0.1:8443
    protocol: https
    pool: web
    tls:
      certificates:
        - {{ cert: {cert:?}, key: {key:?} }}
pools: {{ web: {{ backends: [ {{ address: 127.0.0.1:3001 }} ] }} }}
"
        ),
    )
    .expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let Some((code, err)) = check_as_nobody(&file) else {
        panic!("cannot run autolb check as an unprivileged user (setpriv missing?)");
    };
    assert_eq!(code, 0, "readable: {err}");
    // The key exists, but only its owner may read it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, err) = check_as_nobody(&file).expect("run");
    assert_eq!(code, 1);
    // At the key's path: line 8, where `key: ` ends.
    let text = std::fs::read_to_string(&file).expect("read");
    let column = text
        .lines()
        .nth(7)
        .and_then(|l| l.find("key: "))
        .expect("key")
        + 6;
    assert!(
        err.contains(&format!(
            "{}:8:{column}: cannot read key {}: Permission denied",
            file.display(),
            key.display()
        )),
        "{err}"
    );
}
