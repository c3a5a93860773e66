//! `autolb reload -c FILE` against a running autolb: the changes printed, an invalid file
//! never sent, a refused token or another file's autolb said so with a non-zero exit, and
//! the zero-downtime upgrade to a binary installed over the running one, as systemd's
//! `ExecReload=` runs it (a notification socket standing in for systemd's).

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::Autolb;

/// A port free a moment ago: the reload client learns the admin address from the config
/// file, so it cannot be port 0.
fn free_port() -> u16 {
    common::redis::free_port()
}

fn config(admin_port: u16, backends: &[SocketAddr], extra_admin: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:{admin_port}\"{extra_admin} }}
listeners: [ {{ name: web, listen: \"127.0.0.1:0\", pool: web }} ]
pools:
  web:
    balance: round_robin
    backends:
{}",
        common::backend_list(backends, "")
    )
}

/// The running autolb serves `served`; the test edits, and `autolb reload` names, a hard
/// link to it in another directory. The file watcher (it watches the directories on the
/// served path) sees no event for a write through the other link, so it does not reload on
/// its own, and what `autolb reload` prints is the change it applied.
struct Setup {
    dir: tempfile::TempDir,
    served: PathBuf,
    edit: PathBuf,
}

fn setup(text: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("served"), dir.path().join("edit"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::create_dir(&b).expect("mkdir");
    let served = a.join("autolb.yaml");
    std::fs::write(&served, text).expect("write");
    let edit = b.join("autolb.yaml");
    std::fs::hard_link(&served, &edit).expect("hard link");
    Setup { dir, served, edit }
}

/// Write in place (the same inode: both links see it).
fn edit(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// Start `program run -c SERVED`; answers the guard, the served path and the edited one.
fn start(program: &Path, s: Setup, env: &[(&str, &str)]) -> (Autolb, PathBuf, PathBuf) {
    let (served, edit) = (s.served.clone(), s.edit.clone());
    (
        Autolb::start_program(program, s.dir, served.clone(), env),
        served,
        edit,
    )
}

/// `autolb reload -c FILE` with `env`: (exit code, stdout, stderr). Its output goes to
/// files: an upgrade's new process inherits them and outlives the command.
fn reload(program: &Path, file: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let status = Command::new(program)
        .args(["reload", "--timeout", "60s", "-c"])
        .arg(file)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .status()
        .expect("run autolb reload");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.code().unwrap_or(-1), read(&out), read(&err))
}

#[tokio::test]
async fn reload_applies_the_file_and_prints_the_changes() {
    let (a, b) = (common::echo("a"), common::echo("b"));
    let port = free_port();
    let s = setup(&config(port, &[a.addr], ""));
    let tmp = s.dir.path().to_str().expect("utf-8").to_string();
    let (lb, _, edited) = start(Path::new(common::AUTOLB), s, &[]);
    edit(&edited, &config(port, &[a.addr, b.addr], ""));
    let (code, out, err) = reload(Path::new(common::AUTOLB), &edited, &[("TMPDIR", &tmp)]);
    assert_eq!(code, 0, "{out}{err}\n{}", lb.proc.log());
    assert!(
        out.starts_with(&format!("{}: reloaded: generation 2", edited.display())),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&b.addr.to_string()) && l.contains("added")),
        "{out}"
    );
    // And it serves the new backend.
    let names = common::wait_until(10, "backend b in rotation", || async {
        let r = common::get(lb.addr("web"), "/").await;
        (r.headers.get("x-backend").map(|v| v.as_bytes()) == Some(b"b")).then_some(())
    })
    .await;
    let () = names;
    // Nothing changed since: the same command says so.
    let (code, out, _) = reload(Path::new(common::AUTOLB), &edited, &[("TMPDIR", &tmp)]);
    assert_eq!(code, 0);
    assert!(out.contains("no changes"), "{out}");
}

#[tokio::test]
async fn an_invalid_file_is_not_sent_and_a_refusal_fails_the_command() {
    let a = common::echo("a");
    let port = free_port();
    let s = setup(&config(port, &[a.addr], ""));
    let (lb, served, edited) = start(Path::new(common::AUTOLB), s, &[]);
    edit(
        &edited,
        &config(port, &[a.addr], "").replace("round_robin", "round_robn"),
    );
    let (code, out, err) = reload(Path::new(common::AUTOLB), &edited, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{}:5:14: ", edited.display())) && err.contains("round_robn"),
        "{err}"
    );
    assert!(
        err.contains("the running autolb was not asked to reload"),
        "{err}"
    );
    // It was not: no reload attempt is recorded.
    let h = common::get(lb.admin, "/health").await.json();
    assert_eq!(h["config"]["generation"], 1);
    assert!(h["config"]["last_reload"].is_null(), "{h}");
    // Valid here, refused there: relative paths resolve against the directory of the path
    // that names the file, and only the edited side has the certificate.
    let real = edited.parent().expect("dir");
    let ca = common::tls::TestCa::new("reload CA");
    ca.issue(&["localhost"]).write(real, "site");
    let https = "  - { name: s, listen: \"127.0.0.1:0\", protocol: https, pool: web, tls: { certificates: [ { cert: site.crt, key: site.key } ] } }\n";
    let text = config(port, &[a.addr], "").replacen("\npools:", &format!("\n{https}pools:"), 1);
    let text = text.replace(
        "listeners: [ { name: web, listen: \"127.0.0.1:0\", pool: web } ]",
        "listeners:\n  - { name: web, listen: \"127.0.0.1:0\", pool: web }",
    );
    edit(&edited, &text);
    assert_eq!(common::check(&edited).0, 0, "valid where it is");
    let (code, out, err) = reload(Path::new(common::AUTOLB), &edited, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let missing = served.parent().expect("dir").join("site.crt");
    assert!(
        err.contains(&format!("cannot read certificate {}", missing.display())),
        "{err}"
    );
    assert!(err.contains("the running autolb refused"), "{err}");
    let h = common::get(lb.admin, "/health").await.json();
    assert_eq!(h["config"]["generation"], 1);
    assert_eq!(h["config"]["last_reload"]["result"], "failure");
}

#[tokio::test]
async fn reload_fails_when_no_autolb_answers() {
    let a = common::echo("a");
    let port = free_port();
    let s = setup(&config(port, &[a.addr], ""));
    let (code, out, err) = reload(Path::new(common::AUTOLB), &s.edit, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!(
            "GET /health at 127.0.0.1:{port} (the running autolb's admin API)"
        )),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
}

#[tokio::test]
async fn reload_sends_the_token_and_says_when_it_is_refused() {
    let a = common::echo("a");
    let port = free_port();
    let extra = ", token_env: AUTOLB_TEST_RELOAD_TOKEN";
    let s = setup(&config(port, &[a.addr], extra));
    let tmp = s.dir.path().to_str().expect("utf-8").to_string();
    let (_lb, _, edited) = start(
        Path::new(common::AUTOLB),
        s,
        &[("AUTOLB_TEST_RELOAD_TOKEN", "right")],
    );
    let (code, out, err) = reload(
        Path::new(common::AUTOLB),
        &edited,
        &[("AUTOLB_TEST_RELOAD_TOKEN", "right"), ("TMPDIR", &tmp)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = reload(
        Path::new(common::AUTOLB),
        &edited,
        &[("AUTOLB_TEST_RELOAD_TOKEN", "wrong"), ("TMPDIR", &tmp)],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("AUTOLB_TEST_RELOAD_TOKEN"),
        "{err}"
    );
    // Unset: refused before asking (autolb check says the same).
    let (code, _, err) = reload(Path::new(common::AUTOLB), &edited, &[("TMPDIR", &tmp)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("admin.token_env names AUTOLB_TEST_RELOAD_TOKEN"),
        "{err}"
    );
}

#[tokio::test]
async fn reload_refuses_an_autolb_serving_another_file() {
    let a = common::echo("a");
    let port = free_port();
    let s = setup(&config(port, &[a.addr], ""));
    let other = s.dir.path().join("other.yaml");
    std::fs::write(&other, config(port, &[a.addr], "")).expect("write");
    let (lb, served, _) = start(Path::new(common::AUTOLB), s, &[]);
    let (code, _, err) = reload(Path::new(common::AUTOLB), &other, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "serves {}, not {}",
            served.display(),
            other.display()
        )),
        "{err}"
    );
    let h = common::get(lb.admin, "/health").await.json();
    assert!(h["config"]["last_reload"].is_null(), "{h}");
}

/// Kills a process that is not our child (the upgrade's new autolb) when dropped.
struct Pid(u32);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no memory.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// Every datagram on `sock` so far, as text.
fn notifications(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

fn wait_for_notification(sock: &UnixDatagram, seen: &mut Vec<String>, what: &str) {
    let d = common::Deadline::after(30, format!("{what} among the notifications"));
    while !seen.iter().any(|m| m.contains(what)) {
        d.tick_blocking();
        seen.extend(notifications(sock));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_hands_over_to_a_binary_installed_over_the_running_one() {
    let a = common::echo("a");
    let port = free_port();
    let s = setup(&config(port, &[a.addr], ""));
    let tmp = s.dir.path().to_str().expect("utf-8").to_string();
    // The binary lives where an operator installs it; systemd's socket is a datagram
    // socket of ours.
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let installed = bin.join("autolb");
    std::fs::copy(common::AUTOLB, &installed).expect("copy autolb");
    let notify_path = s.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_nonblocking(true).expect("nonblocking");
    let notify_env = notify_path.to_str().expect("utf-8").to_string();
    let (lb, _, edited) = start(&installed, s, &[("NOTIFY_SOCKET", &notify_env)]);
    let old = lb.proc.pid();
    let mut seen = Vec::new();
    wait_for_notification(&notify, &mut seen, "READY=1");
    let web = lb.addr("web");

    // Requests all along, on fresh connections and on keep-alive ones (resent once on a
    // new connection when the server closed it while idle, as browsers do): none may fail.
    // A refused connection panics the task: a failure too.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for fresh in [true, false] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut client: Option<common::Client> = None;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if fresh {
                    client = None;
                }
                let mut result = Err(String::new());
                for _ in 0..2 {
                    let c = match &mut client {
                        Some(c) => c,
                        None => client.insert(common::Client::connect(web).await),
                    };
                    result = match c.try_get("/").await {
                        Ok(r) if r.status == 200 => Ok(()),
                        Ok(r) => Err(format!("{} {}", r.status, r.text())),
                        Err(e) if e.resendable && !fresh => {
                            client = None;
                            continue;
                        }
                        Err(e) => Err(e.message),
                    };
                    break;
                }
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }));
    }
    common::wait_until(10, "requests flowing", || async {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;

    // Install a new binary over the running one (a new file, as install(1) does), then
    // run what systemd's ExecReload= runs, from the installed path.
    let staged = bin.join(".autolb.new");
    std::fs::copy(common::AUTOLB, &staged).expect("copy");
    std::fs::rename(&staged, &installed).expect("install");
    let env = [
        ("TMPDIR", tmp.as_str()),
        ("NOTIFY_SOCKET", notify_env.as_str()),
    ];
    let (code, out, err) = tokio::task::spawn_blocking({
        let (installed, edited) = (installed.clone(), edited.clone());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            reload(&installed, &edited, &env)
        }
    })
    .await
    .expect("reload");
    let new: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("upgrade: done: pid "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("exit {code}\n{out}\n{err}\n{}", lb.proc.log()));
    let _guard = Pid(new);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(new, old);
    // systemd was told who the main process is now, before the old one was told to go.
    wait_for_notification(&notify, &mut seen, &format!("MAINPID={new}"));
    assert!(seen.iter().any(|m| m.contains("BARRIER=1")), "{seen:?}");
    // The old process is gone, the new one answers.
    let h = common::get(lb.admin, "/health").await.json();
    assert_eq!(h["pid"], new);
    assert!(common::get(web, "/").await.status == 200);
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in load {
        errors.extend(task.await.expect("load"));
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{errors:?}\n{err}");
    assert!(ok.load(Ordering::Relaxed) > 20);
    // The old process ends its drain (the load stopped) and exits.
    let mut lb = lb;
    let status = lb.proc.exited(30).await;
    assert!(status.success(), "old process: {status:?}");
    // Same binary now: a reload is a config reload again.
    let (code, out, err) = reload(&installed, &edited, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded: generation"), "{out}");
}
