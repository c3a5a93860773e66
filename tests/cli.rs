//! The command line as an operator meets it: help for each command with examples and the
//! environment variables autolb reads, the version with its build, no panic when stdout is
//! closed, an error said once, and the forms older scripts use (`autolb -c FILE`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn output(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `AUTOLB_*` name in the sources, but the sticky cookie's default name (no
/// environment variable) and what build.rs reads (build time, docs/operations.md).
fn environment_variables() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (i, _) in text.match_indices("AUTOLB_") {
                    let name: String = text[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
    }
    let mut names = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names.retain(|n| {
        n != "AUTOLB_SID"
            && n != "AUTOLB_GIT_COMMIT"
            && !n.starts_with("AUTOLB_BUILD_")
            && n != "AUTOLB_"
    });
    names.sort();
    names
}

#[test]
fn help_lists_every_environment_variable_autolb_reads() {
    let names = environment_variables();
    assert!(names.len() >= 8, "{names:?}");
    for args in [
        &["--help"][..],
        &["-h"],
        &["run", "--help"],
        &["reload", "--help"],
    ] {
        let (code, help, _) = output(common::AUTOLB, args);
        assert_eq!(code, 0, "{args:?}");
        for n in &names {
            assert!(
                help.contains(n.as_str()),
                "autolb {args:?} does not list {n}:\n{help}"
            );
        }
    }
}

#[test]
fn every_command_has_its_own_help_with_examples() {
    let mut usages = Vec::new();
    for (cmd, needle) in [
        ("run", "autolb run -c /etc/autolb/autolb.yaml"),
        ("check", "autolb check -q -c"),
        ("reload", "autolb reload -c /etc/autolb/autolb.yaml"),
    ] {
        let (code, help, _) = output(common::AUTOLB, &[cmd, "--help"]);
        assert_eq!(code, 0);
        assert!(
            help.contains("Examples:") && help.contains(needle),
            "{cmd}:\n{help}"
        );
        let usage = help
            .lines()
            .find(|l| l.starts_with("Usage:"))
            .expect("a usage line")
            .to_string();
        assert!(usage.contains(&format!("autolb {cmd}")), "{usage}");
        usages.push(usage);
    }
    let (_, top, _) = output(common::AUTOLB, &["--help"]);
    for cmd in ["run", "check", "reload", "version"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lists {cmd}:\n{top}"
        );
    }
    // check takes the file positionally or with -c, and -q.
    let (_, check, _) = output(common::AUTOLB, &["check", "-h"]);
    assert!(check.contains("[FILE]") && check.contains("--config") && check.contains("--quiet"));
    // Without arguments: the help, as a usage error.
    let (code, _, err) = output(common::AUTOLB, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage:"), "{err}");
    let (code, _, err) = output(common::AUTOLB, &["frobnicate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_version_names_the_commit_the_profile_and_rustc() {
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for (program, args) in [
        (common::AUTOLB, &["--version"][..]),
        (common::AUTOLB, &["-V"]),
        (common::AUTOLB, &["version"]),
        (common::ECHO, &["--version"]),
    ] {
        let (code, out, err) = output(program, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let name = if program == common::ECHO {
            "autolb-echo"
        } else {
            "autolb"
        };
        assert!(
            out.starts_with(&format!("{name} {}\n", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        // Tests run the dev profile's binaries, in target/debug.
        assert!(out.contains("\nbuild profile: debug\n"), "{out}");
        let rustc = out
            .lines()
            .find_map(|l| l.strip_prefix("rustc: "))
            .expect("a rustc line");
        assert!(rustc.starts_with("rustc 1."), "{out}");
        let commit = out
            .lines()
            .find_map(|l| l.strip_prefix("git commit: "))
            .expect("a git commit line");
        match &git {
            Some(head) => assert_eq!(commit, head, "{out}"),
            None => assert!(!commit.is_empty()),
        }
    }
}

/// `autolb --help | head -0`: stdout is a pipe nobody reads any more.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/autolb.yaml");
    let conf = conf.to_str().expect("utf-8 path");
    for (program, args) in [
        (common::AUTOLB, &["--help"][..]),
        (common::AUTOLB, &["run", "--help"]),
        (common::AUTOLB, &["--version"]),
        (common::AUTOLB, &["version"]),
        (common::AUTOLB, &["check", conf]),
        (common::ECHO, &["--help"]),
        (common::ECHO, &["--version"]),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(program)
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn a_start_up_error_is_said_once() {
    // The admin port is taken: autolb cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("autolb.yaml");
    let echo = common::echo("a");
    std::fs::write(
        &file,
        format!(
            "admin: {{ listen: \"127.0.0.1:{port}\" }}
listeners: [ {{ name: web, listen: \"127.0.0.1:0\", pool: web }} ]
pools: {{ web: {{ backends: [ {{ address: \"{}\" }} ] }} }}
",
            echo.addr
        ),
    )
    .expect("write");
    let out = Command::new(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&file)
        .env("TMPDIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[test]
fn autolb_dash_c_still_runs_the_balancer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("autolb.yaml");
    let echo = common::echo("a");
    std::fs::write(
        &file,
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}
listeners: [ {{ name: web, listen: \"127.0.0.1:0\", pool: web }} ]
pools: {{ web: {{ backends: [ {{ address: \"{}\" }} ] }} }}
",
            echo.addr
        ),
    )
    .expect("write");
    let mut child = common::command(common::AUTOLB)
        .arg("-c")
        .arg(&file)
        .env("TMPDIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = common::collect(child.stderr.take().expect("stderr"));
    let proc = common::Proc { child, log };
    assert!(
        proc.log_shows("autolb started", Duration::from_secs(30)),
        "{}",
        proc.log()
    );
}
