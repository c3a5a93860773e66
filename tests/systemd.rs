//! docker/autolb.service without a running systemd: `systemd-analyze verify` accepts it,
//! `systemd-analyze security` scores it at most 2.0, it starts, checks and reloads with
//! the commands of docs/operations.md, and every system call and socket family autolb,
//! its instances, `autolb reload` and an upgrade's new process use (traced with strace)
//! are allowed by its SystemCallFilter= and RestrictAddressFamilies=. The install
//! procedure of the docs creates the user before anything names it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(root().join("docker/autolb.service")).expect("read the unit")
}

/// (section, key, value) of every setting, in order.
fn unit() -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in unit_text()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            keys.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    keys
}

fn get(keys: &[(String, String, String)], section: &str, key: &str) -> String {
    keys.iter()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .unwrap_or_else(|| panic!("[{section}] {key}"))
}

/// systemd-analyze, which .ci/run installs (Debian package systemd).
fn systemd_analyze() -> Option<&'static str> {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (.ci/run installs the systemd package)"
        );
    }
    ok.then_some("systemd-analyze")
}

#[test]
fn the_unit_runs_checks_and_reloads_with_autolb() {
    let keys = unit();
    let config = "/etc/autolb/autolb.yaml";
    assert_eq!(get(&keys, "Service", "Type"), "notify");
    assert_eq!(get(&keys, "Service", "NotifyAccess"), "all");
    assert!(
        get(&keys, "Service", "ExecStartPre").ends_with(&format!("autolb check -q -c {config}"))
    );
    assert_eq!(
        get(&keys, "Service", "ExecStart"),
        format!("/usr/local/bin/autolb run -c {config}")
    );
    let reload = get(&keys, "Service", "ExecReload");
    assert!(
        reload.starts_with("/usr/local/bin/autolb reload ")
            && reload.ends_with(&format!("-c {config}")),
        "{reload}"
    );
    // The hand-over socket of an upgrade lives in the runtime directory.
    assert_eq!(get(&keys, "Service", "RuntimeDirectory"), "autolb");
    assert_eq!(get(&keys, "Service", "KillSignal"), "SIGTERM");
    assert_ne!(get(&keys, "Service", "User"), "root");
    assert_eq!(get(&keys, "Install", "WantedBy"), "multi-user.target");
    assert!(get(&keys, "Unit", "After").contains("network-online.target"));
    // The reload's own timeout ends before systemd's.
    let secs = |v: &str| -> u64 { v.trim_end_matches('s').parse().expect("seconds") };
    let client = reload
        .split_whitespace()
        .skip_while(|w| *w != "--timeout")
        .nth(1)
        .expect("--timeout");
    assert!(secs(client) < secs(&get(&keys, "Service", "TimeoutStartSec")));
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // verify checks that the programs exist: point them at the ones under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("autolb.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/local/bin/autolb", common::AUTOLB),
    )
    .expect("write");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("autolb.service"),
        "warnings about the unit:\n{err}"
    );
}

#[test]
fn systemd_analyze_security_scores_it_at_most_2() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(root().join("docker/autolb.service"))
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for autolb.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

/// The system calls a filter allows: its groups expanded by systemd-analyze.
fn syscalls(analyze: &str, groups: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for g in groups {
        if !g.starts_with('@') {
            out.insert(g.to_string());
            continue;
        }
        let list = Command::new(analyze)
            .args(["syscall-filter", "--no-pager", g])
            .output()
            .expect("systemd-analyze syscall-filter");
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        let members: Vec<&str> = text
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(!members.is_empty(), "no members for {g}");
        out.extend(syscalls(analyze, &members));
    }
    out
}

/// A process that is not our child (an upgrade's new autolb), killed when dropped.
struct Pid(u32);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no memory.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

fn wait_exit(child: &mut std::process::Child, what: &str) {
    common::wait_blocking(60, &format!("{what} to exit"), || {
        child.try_wait().expect("wait")
    });
}

/// `strace -f` of a command into `out`.
fn traced(out: &Path) -> Command {
    let mut c = common::command("strace");
    c.args(["-f", "-qq", "-s", "0", "-o"]).arg(out);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_allows_every_system_call_autolb_makes() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let strace = Command::new("strace").arg("-V").output();
    if !strace.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: strace is not installed (.ci/run installs it)");
        return;
    }
    // What the unit allows.
    let keys = unit();
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for (_, k, v) in keys.iter().filter(|(s, _, _)| s == "Service") {
        if k == "SystemCallFilter" {
            match v.strip_prefix('~') {
                Some(d) => {
                    deny.extend(syscalls(analyze, &d.split_whitespace().collect::<Vec<_>>()))
                }
                None => allow.extend(syscalls(analyze, &v.split_whitespace().collect::<Vec<_>>())),
            }
        }
    }
    let allowed: BTreeSet<String> = allow.difference(&deny).cloned().collect();
    assert!(allowed.contains("execve") && !allowed.contains("setrlimit"));
    let families: Vec<String> = get(&keys, "Service", "RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_string)
        .collect();

    // autolb with the process provider (autolb-echo instances), an access log file, a
    // reload by signal, `autolb reload`, then an upgrade to a new process and a stop.
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = common::free_port();
    let base = 29_000 + (std::process::id() % 100) as u16 * 10;
    let config = dir.path().join("autolb.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: \"127.0.0.1:{admin}\" }}
access_log: {{ path: access.log }}
listeners: [ {{ name: web, listen: \"127.0.0.1:0\", pool: auto }} ]
pools:
  auto:
    autoscale:
      command: [autolb-echo, --port, \"{{port}}\"]
      ports: {base}-{}
      min: 1
      max: 2
      interval: 300ms
      target: {{ inflight_per_instance: 10 }}
",
            base + 9
        ),
    )
    .expect("write");
    let trace = dir.path().join("run.trace");
    let mut run = traced(&trace)
        .arg(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&config)
        .env("TMPDIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace autolb");
    let log = common::collect(run.stderr.take().expect("stderr"));
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let health = common::wait_until(60, "autolb serving", || async {
        let ok = tokio::net::TcpStream::connect(admin_addr).await.is_ok();
        if !ok {
            return None;
        }
        let h = common::get(admin_addr, "/health").await.json();
        (h["pools"][0]["ready"] == 1).then_some(h)
    })
    .await;
    let first = Pid(health["pid"].as_u64().expect("pid") as u32);
    let web = common::wait_until(10, "the web listener", || async {
        let l = log.lock().expect("log").clone();
        l.lines()
            .find_map(|line| line.split("listener=web addr=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(common::get(web, "/").await.status, 200);
    }
    // SIGHUP reload.
    // SAFETY: kill(2) takes no memory.
    unsafe {
        libc::kill(first.0 as i32, libc::SIGHUP);
    }
    // `autolb reload` (a config reload), then `autolb reload --upgrade`.
    let reload_trace = dir.path().join("reload.trace");
    let out = traced(&reload_trace)
        .arg(common::AUTOLB)
        .args(["reload", "-c"])
        .arg(&config)
        .env("TMPDIR", dir.path())
        .output()
        .expect("reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upgrade_trace = dir.path().join("upgrade.trace");
    let upgrade_out = dir.path().join("upgrade.out");
    let mut upgrade = traced(&upgrade_trace)
        .arg(common::AUTOLB)
        .args(["reload", "--upgrade", "-c"])
        .arg(&config)
        .env("TMPDIR", dir.path())
        .stdout(std::fs::File::create(&upgrade_out).expect("out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("upgrade");
    let new = common::wait_until(90, "the upgrade", || async {
        let out = std::fs::read_to_string(&upgrade_out).unwrap_or_default();
        out.lines()
            .find_map(|l| l.strip_prefix("upgrade: done: pid "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse::<u32>().ok())
    })
    .await;
    let new = Pid(new);
    for _ in 0..20 {
        assert_eq!(common::get(web, "/").await.status, 200);
    }
    wait_exit(&mut run, "the old autolb (and strace)");
    // Stop: SIGTERM drains and stops the instances.
    // SAFETY: kill(2) takes no memory.
    unsafe {
        libc::kill(new.0 as i32, libc::SIGTERM);
    }
    wait_exit(&mut upgrade, "the new autolb (and strace)");

    let mut used = BTreeSet::new();
    let mut socket_families = BTreeSet::new();
    for t in [&trace, &reload_trace, &upgrade_trace] {
        let text = std::fs::read_to_string(t).expect("trace");
        for line in text.lines() {
            // "PID name(args) = result", "PID <... name resumed>..."
            let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || rest.starts_with("+++") || rest.starts_with("---") {
                continue;
            }
            if let Some(args) = rest.strip_prefix("socket(") {
                socket_families.insert(args.split([',', ')']).next().unwrap_or("").to_string());
            }
            used.insert(name);
        }
    }
    assert!(
        used.contains("execve") && (used.contains("epoll_wait") || used.contains("epoll_pwait")),
        "{used:?}"
    );
    let refused: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        refused.is_empty(),
        "system calls the unit refuses (EPERM): {refused:?}"
    );
    let refused: Vec<&String> = socket_families
        .iter()
        .filter(|f| !families.contains(f))
        .collect();
    assert!(
        refused.is_empty(),
        "socket families the unit refuses: {refused:?}"
    );
    drop(first);
}

/// The install procedure of docs/operations.md ("systemd"), in order.
fn install_procedure() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).expect("read docs");
    let section = doc.split("### systemd").nth(1).expect("a systemd section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_install_procedure_creates_the_user_first_and_lets_it_read_the_config() {
    let steps = install_procedure();
    let useradd = steps
        .iter()
        .position(|s| s.contains("useradd") && s.ends_with(" autolb"))
        .expect("useradd autolb");
    for (i, s) in steps.iter().enumerate() {
        let names_user = s.contains("-g autolb") || s.contains("-o autolb") || s.contains("chown");
        assert!(
            !names_user || i > useradd,
            "step {i} names the user before useradd: {s}"
        );
    }
    // Every path the unit uses is installed, readable by the service's group.
    let keys = unit();
    let binary = get(&keys, "Service", "ExecStart");
    let binary = binary.split_whitespace().next().expect("program");
    let dir = Path::new(binary)
        .parent()
        .expect("dir")
        .display()
        .to_string();
    assert!(
        steps.iter().any(|s| s.contains("install -m 0755")
            && s.contains("autolb-echo")
            && s.ends_with(&format!("{dir}/"))),
        "installs autolb and autolb-echo into {dir}: {steps:?}"
    );
    assert!(
        steps.iter().any(|s| s.contains("install -d")
            && s.contains("-g autolb")
            && s.ends_with("/etc/autolb")),
        "{steps:?}"
    );
    let config = steps
        .iter()
        .find(|s| s.starts_with("sudo install") && s.ends_with("/etc/autolb/autolb.yaml"))
        .expect("the config installed");
    assert!(
        config.contains("-g autolb") && config.contains("-m 0640"),
        "{config}"
    );
    let env = steps
        .iter()
        .find(|s| s.contains("/etc/autolb/autolb.env"))
        .expect("the secrets file");
    assert!(env.contains("-g autolb") && env.contains("0640"), "{env}");
    let unit_at = steps
        .iter()
        .position(|s| s.contains("docker/autolb.service") && s.contains("/etc/systemd/system/"))
        .expect("the unit installed");
    let enable = steps
        .iter()
        .position(|s| s.contains("systemctl enable --now autolb"))
        .expect("enabled");
    assert!(unit_at < enable);
    let check = steps
        .iter()
        .position(|s| s.contains("autolb check"))
        .expect("the config checked as the service user");
    assert!(steps[check].contains("-u autolb"), "{}", steps[check]);
    assert!(check < enable);
}
