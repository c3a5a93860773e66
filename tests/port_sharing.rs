//! One listening address, one autolb: a second autolb (or any other program) started on
//! an address an autolb listens on fails with an error naming the port, instead of
//! joining its SO_REUSEPORT group and splitting its connections. `reuse_port: true`
//! shares on purpose; `autolb run --upgrade` takes the sockets over (tests/upgrade.rs).

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::{echo, Autolb};

fn yaml(backend: std::net::SocketAddr, listen: &str, extra: &str) -> String {
    common::config(
        2,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            common::backend_list(&[backend], "")
        ),
    )
    .replace(
        "{ name: web, listen: \"127.0.0.1:0\"",
        &format!("{{ name: web, listen: \"{listen}\"{extra}"),
    )
}

/// Run `autolb run` on `yaml` and wait (at most 30 s) for it to exit: its exit code and
/// log. It must not start serving.
fn run_to_failure(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("autolb.yaml");
    std::fs::write(&config, yaml).expect("write");
    let mut child = common::command(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&config)
        .env("TMPDIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autolb");
    let log = common::collect(child.stderr.take().expect("stderr"));
    let proc = common::Proc { child, log };
    let mut proc = proc;
    let log = proc.log.clone();
    let status = common::wait_blocking_or(
        30,
        || {
            assert!(
                !proc.log().contains("autolb started"),
                "the second autolb started on a taken address:\n{}",
                proc.log()
            );
            proc.child.try_wait().expect("wait")
        },
        || format!("still running:\n{}", common::log_text(&log)),
    );
    // The stderr reader may be a moment behind the exit.
    proc.log_shows("\n", Duration::from_secs(2));
    (status.code(), proc.log())
}

#[tokio::test]
async fn a_second_autolb_on_the_same_address_fails_naming_the_port() {
    let a = echo("a");
    let first = Autolb::start(&yaml(a.addr, "127.0.0.1:0", ""));
    let addr = first.addr("web");
    let second = yaml(a.addr, &addr.to_string(), "");
    let (code, log) = tokio::task::spawn_blocking(move || run_to_failure(&second))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("port {} is in use", addr.port())),
        "{log}"
    );
    assert!(
        log.contains(&format!("pid {}", first.proc.pid())),
        "the error names the process holding the port: {log}"
    );
    // The first one still has every connection.
    for _ in 0..20 {
        assert_eq!(common::get(addr, "/").await.text(), "a");
    }
}

#[tokio::test]
async fn an_address_any_other_program_listens_on_is_refused_naming_the_port() {
    let a = echo("a");
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = other.local_addr().expect("addr");
    let yaml = yaml(a.addr, &addr.to_string(), "");
    let (code, log) = tokio::task::spawn_blocking(move || run_to_failure(&yaml))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("port {} is in use", addr.port())),
        "{log}"
    );
    assert!(
        log.contains(&format!("pid {}", std::process::id())),
        "{log}"
    );
}

#[tokio::test]
async fn reuse_port_true_shares_the_address_on_purpose() {
    let (a, b) = (echo("a"), echo("b"));
    let first = Autolb::start(&yaml(a.addr, "127.0.0.1:0", ""));
    let addr = first.addr("web");
    let second = Autolb::start(&yaml(b.addr, &addr.to_string(), ", reuse_port: true"));
    assert_eq!(second.addr("web"), addr);
    // The kernel spreads new connections over both processes' sockets.
    let mut seen = HashSet::new();
    for _ in 0..200 {
        seen.insert(common::get(addr, "/").await.text());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]));
}
