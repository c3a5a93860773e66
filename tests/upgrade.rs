//! Zero-downtime restart: `autolb run --upgrade` takes over the listening sockets of the
//! running autolb under load; not one request fails and the old process exits 0.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{echo, Autolb, Client};
use std::process::Stdio;

/// One GET as a browser does it: on a keep-alive connection the server closed while idle
/// (the classic race), resend on a new connection. Anything else is a failure.
async fn get(client: &mut Option<Client>, addr: std::net::SocketAddr) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..2 {
        let c = match client {
            Some(c) => c,
            None => client.insert(Client::connect(addr).await),
        };
        match c.try_get("/").await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => return Err(format!("{} {}", r.status, r.text())),
            Err(e) if e.resendable => {
                last.push_str(&e.message);
                last.push_str("; ");
                *client = None;
                continue;
            }
            Err(e) => return Err(e.message),
        }
    }
    Err(format!("failed twice: {last}"))
}

#[tokio::test]
async fn an_upgrade_under_load_loses_no_request() {
    let (a, b) = (echo("a"), echo("b"));
    let list = common::backend_list(&[a.addr, b.addr], "");
    let yaml = common::config(
        2,
        "",
        &format!("shutdown_grace: 10s\npools:\n  web:\n    backends:\n{list}"),
    );
    let old = Autolb::start(&yaml);
    let addr = old.addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (stop, failures) = (stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = None;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 50_000 {
                if w % 2 == 1 {
                    client = None; // a new connection per request
                }
                if let Err(e) = get(&mut client, addr).await {
                    failures.lock().expect("lock").push(e);
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut new = common::command(common::AUTOLB)
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config)
        .env("AUTOLB_LOG", "info")
        .env("TMPDIR", old.config.parent().expect("config dir"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the new autolb");
    let new_log = common::collect(new.stderr.take().expect("stderr"));
    let new = common::Proc {
        child: new,
        log: new_log,
    };

    // The old process drains and exits 0 by itself.
    let mut old_proc = old.proc;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = old_proc.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "old process still running\n{}",
            old_proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", old_proc.log());
    // Load goes on against the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}\nnew log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        new.log()
    );
    assert!(
        new.log().contains("taking over listening sockets"),
        "{}",
        new.log()
    );
    assert!(
        old_proc.log().contains("upgrade: the new process serves"),
        "{}",
        old_proc.log()
    );
    // The admin port moved too.
    let h = common::get(old.admin, "/health").await;
    assert_eq!(h.status, 200);
    drop(new);
}

/// A deploy that moves a `current -> releases/N` link and then upgrades through the same
/// path finds the running autolb (its socket is named after the path as given, not after
/// the file it resolves to, which the deploy just changed).
#[tokio::test]
async fn an_upgrade_through_a_moved_current_symlink_finds_the_running_process() {
    let e = echo("e");
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            common::backend_list(&[e.addr], "")
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    for r in ["releases/1", "releases/2"] {
        std::fs::create_dir_all(root.join(r)).expect("mkdir");
        std::fs::write(root.join(r).join("autolb.yaml"), &yaml).expect("write");
    }
    std::os::unix::fs::symlink("releases/1", root.join("current")).expect("symlink");
    let config = root.join("current/autolb.yaml");
    let old = Autolb::start_file(dir, config.clone(), &[]);
    let web = old.addr("web");
    assert_eq!(common::get(web, "/").await.text(), "e");

    std::os::unix::fs::symlink("releases/2", root.join("current.tmp")).expect("symlink");
    std::fs::rename(root.join("current.tmp"), root.join("current")).expect("move current");
    let mut new = common::command(common::AUTOLB)
        .args(["run", "--upgrade", "-c"])
        .arg(&config)
        .env("AUTOLB_LOG", "info")
        .env("TMPDIR", &root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the new autolb");
    let new_log = common::collect(new.stderr.take().expect("stderr"));
    let new = common::Proc {
        child: new,
        log: new_log,
    };
    let mut old_proc = old.proc;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = old_proc.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "old process still running\nold:\n{}\nnew:\n{}",
            old_proc.log(),
            new.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", old_proc.log());
    assert!(
        new.log().contains("taking over listening sockets"),
        "{}",
        new.log()
    );
    assert_eq!(common::get(web, "/").await.text(), "e");
}
