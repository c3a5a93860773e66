//! Zero-downtime restart: `autolb run --upgrade` takes over the listening sockets of the
//! running autolb under load, twenty times in a row; not one request fails (none is
//! resent), on reused keep-alive connections as on new ones, and each old process exits 0.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use common::{echo, Autolb, Proc};

const UPGRADES: usize = 20;
const CLIENTS: usize = 32;

/// What a client saw: requests answered, and every failure (with why).
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failures.lock().expect("lock").push(why);
    }
}

/// One keep-alive client: requests back to back on one connection (a new one only after
/// a `Connection: close` answer, or per request when `fresh`), half of them POSTs with a
/// body (never safe to resend). A request that was sent and got no complete 200 answer is
/// a failure; nothing is retried.
async fn client(
    id: usize,
    addr: SocketAddr,
    fresh: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    for n in 0..200_000u32 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => match http1::handshake(TokioIo::new(s)).await {
                    Ok((tx, driver)) => {
                        tokio::spawn(driver);
                        Some(tx)
                    }
                    Err(e) => {
                        tally.fail(format!("client {id}: handshake: {e}"));
                        None
                    }
                },
                Err(e) => {
                    tally.fail(format!("client {id}: connect: {e}"));
                    None
                }
            };
        }
        let Some(tx) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if tx.ready().await.is_err() {
            // Closed before anything was sent: no request lost, connect again.
            conn = None;
            continue;
        }
        let post = n % 2 == 0;
        let req = if post {
            http::Request::post("/echo")
                .header("host", "upgrade.test")
                .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        } else {
            http::Request::get("/")
                .header("host", "upgrade.test")
                .body(Full::new(Bytes::new()))
        }
        .expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            let resp = tx
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let close = resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if status != 200 {
                return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            if post && !String::from_utf8_lossy(&body).contains("\"body_length\":2048") {
                return Err(format!(
                    "POST body not seen whole: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(close)
        })
        .await;
        match answer {
            Ok(Ok(close)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if close || fresh {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                tally.fail(format!(
                    "client {id} {}: {e}",
                    if post { "POST" } else { "GET" }
                ));
                conn = None;
            }
            Err(_) => {
                tally.fail(format!("client {id}: no answer within 30 s"));
                conn = None;
            }
        }
    }
}

/// Start `autolb run --upgrade` for `config` (its upgrade socket is in the config's
/// directory, as for the first autolb).
fn upgrade(config: &Path) -> Proc {
    let mut child = common::command(common::AUTOLB)
        .args(["run", "--upgrade", "-c"])
        .arg(config)
        .env("AUTOLB_LOG", "info")
        .env("TMPDIR", config.parent().expect("config dir"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the new autolb");
    let log = common::collect(child.stderr.take().expect("stderr"));
    Proc { child, log }
}

/// Wait for `proc` to exit by itself; its exit code.
async fn exit_code(proc: &mut Proc, secs: u64) -> Option<i32> {
    proc.exited(secs).await.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_keep_alive_load_lose_no_request() {
    let (a, b) = (echo("a"), echo("b"));
    let list = common::backend_list(&[a.addr, b.addr], "");
    let yaml = common::config(
        2,
        "",
        &format!("shutdown_grace: 10s\npools:\n  web:\n    backends:\n{list}"),
    );
    let first = Autolb::start(&yaml);
    let addr = first.addr("web");
    let admin = first.admin;
    let config = first.config.clone();
    assert!(
        first
            .proc
            .log_shows("a successor can take over", Duration::from_secs(10)),
        "{}",
        first.proc.log()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            // Most connections are reused keep-alive ones; every eighth client opens a new
            // connection per request.
            tokio::spawn(client(id, addr, id % 8 == 7, stop.clone(), tally.clone()))
        })
        .collect();
    common::wait_until(20, "load running", || async {
        let failures = tally.failures.lock().expect("lock");
        assert!(
            failures.is_empty(),
            "before any upgrade: {:?}",
            &failures[..1]
        );
        (tally.ok.load(Ordering::Relaxed) > 500).then_some(())
    })
    .await;

    // `first` keeps its temporary directory (the config) alive; `later` is the process
    // serving after the last upgrade.
    let mut first = first;
    let mut later: Option<Proc> = None;
    let mut served_before = tally.ok.load(Ordering::Relaxed);
    for round in 1..=UPGRADES {
        let new = upgrade(&config);
        assert!(
            new.log_shows("upgrade: serving", Duration::from_secs(60)),
            "round {round}: the new process did not take over\n{}",
            new.log()
        );
        let old = later.as_mut().unwrap_or(&mut first.proc);
        let code = exit_code(old, 30).await;
        assert_eq!(code, Some(0), "round {round}: old process\n{}", old.log());
        assert!(
            new.log_shows("a successor can take over", Duration::from_secs(10)),
            "round {round}\n{}",
            new.log()
        );
        // The load ran through this upgrade.
        common::wait_until(20, "requests after the upgrade", || async {
            (tally.ok.load(Ordering::Relaxed) > served_before + 200).then_some(())
        })
        .await;
        served_before = tally.ok.load(Ordering::Relaxed);
        later = Some(new);
    }
    let last = later.expect("upgraded");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let failures = tally.failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across {UPGRADES} upgrades: {:?}\nlast log:\n{}",
        failures.len(),
        tally.ok.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(10)],
        last.log()
    );
    // The admin port moved along.
    let h = common::get(admin, "/health").await;
    assert_eq!(h.status, 200);
    drop(last);
}

/// The race above made deterministic: a keep-alive connection idle when the upgrade
/// happens is not closed under its client; its next request is answered (by the old
/// process, with `Connection: close`), and then the old process exits.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_answered_once_more_after_an_upgrade() {
    let a = echo("a");
    let list = common::backend_list(&[a.addr], "");
    let yaml = common::config(
        1,
        "",
        &format!("shutdown_grace: 20s\npools:\n  web:\n    backends:\n{list}"),
    );
    let mut first = Autolb::start(&yaml);
    assert!(
        first
            .proc
            .log_shows("a successor can take over", Duration::from_secs(10)),
        "{}",
        first.proc.log()
    );
    let mut idle = common::Client::connect(first.addr("web")).await;
    assert_eq!(idle.get("/").await.status, 200);
    let new = upgrade(&first.config);
    assert!(
        first
            .proc
            .log_shows("draining: no longer accepting", Duration::from_secs(60)),
        "{}\n{}",
        first.proc.log(),
        new.log()
    );
    // Well past the 250 ms a stop gives an idle connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        first.proc.child.try_wait().expect("wait").is_none(),
        "the old process left with the connection open"
    );
    let r = idle
        .try_get("/")
        .await
        .unwrap_or_else(|e| panic!("the idle connection was closed: {}", e.message));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert_eq!(exit_code(&mut first.proc, 20).await, Some(0));
    // New connections reach the new process.
    assert_eq!(common::get(first.addr("web"), "/").await.status, 200);
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
    let status = old_proc.exited(30).await;
    assert_eq!(status.code(), Some(0), "{}", old_proc.log());
    // (Its stderr is read on another thread: the line may arrive a moment later.)
    assert!(
        new.log_shows("taking over listening sockets", Duration::from_secs(10)),
        "{}",
        new.log()
    );
    assert_eq!(common::get(web, "/").await.text(), "e");
}
