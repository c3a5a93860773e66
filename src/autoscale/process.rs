//! The `process` provider: start an instance from the pool's command (with `{port}` and
//! `{instance}` substituted, `PORT` set, output sent to the log), and stop it: SIGTERM to
//! its process group, then SIGKILL after a grace period.
// pre_exec (the parent-death signal set in the child, between fork and exec) has no safe
// API; the process group and its signals go through tokio and rustix.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::config::Autoscale;

/// Resolve the program: a bare name is looked up beside the autolb binary first, then on
/// PATH (by the OS).
pub fn resolve_program(name: &str) -> PathBuf {
    if !name.contains('/') {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            let beside = dir.join(name);
            if beside.is_file() {
                return beside;
            }
        }
    }
    PathBuf::from(name)
}

fn substitute(arg: &str, port: u16, instance: &str) -> String {
    arg.replace("{port}", &port.to_string())
        .replace("{instance}", instance)
}

/// Start one instance. Its stdout and stderr become log lines prefixed with its id. It gets
/// its own process group (stopped as a whole) and dies with autolb even on SIGKILL
/// (PR_SET_PDEATHSIG on Linux).
pub fn spawn(cfg: &Autoscale, pool: &str, instance: &str, port: u16) -> std::io::Result<Child> {
    let command = cfg.provider.process().map_or(&[][..], |p| &p.command[..]);
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty autoscale command",
        ));
    };
    let program = resolve_program(&substitute(program, port, instance));
    let mut cmd = Command::new(&program);
    cmd.args(args.iter().map(|a| substitute(a, port, instance)))
        .env("PORT", port.to_string())
        .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: `signal_group` reaches whatever the instance started.
        .process_group(0);
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(dir);
    }
    // Read here, in autolb: the child compares its parent against it. (Comparing against
    // 1 would kill every instance of an autolb that is itself PID 1, as in a container.)
    let autolb = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec,
    // nothing allocated or locked.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // autolb may have died before prctl (the child was re-parented): do not
            // outlive it.
            if libc::getppid() != autolb {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // The OS error alone ("No such file or directory") does not say what was run.
    let mut child = cmd.spawn().map_err(|e| {
        let looked = if program.components().count() == 1 {
            " (looked for beside autolb, then on PATH)"
        } else {
            ""
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot run {}{looked}: {e}", program.display()),
        )
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(
            out,
            pool.to_string(),
            instance.to_string(),
            "stdout",
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(
            err,
            pool.to_string(),
            instance.to_string(),
            "stderr",
        ));
    }
    Ok(child)
}

async fn forward_lines<R: AsyncRead + Unpin>(
    r: R,
    pool: String,
    instance: String,
    stream: &'static str,
) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "autolb::instance", pool = %pool, instance = %instance, stream, "{line}");
    }
}

/// Send `signal` to the child's process group (gone already: nothing to do).
pub fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// SIGTERM the instance's group, wait up to `grace`, then SIGKILL it. Returns how it ended.
pub async fn stop(child: &mut Child, grace: Duration) -> String {
    let Some(pid) = child.id() else {
        return "already exited".into();
    };
    signal_group(pid, Signal::TERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => format!("exited after SIGTERM ({status})"),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            signal_group(pid, Signal::KILL);
            let _ = child.wait().await;
            format!("killed after {grace:?} grace")
        }
    }
}

/// The `process` provider behind the provider seam: the control loop's own instances.
pub struct Process;

impl super::provider::Provider for Process {
    fn tick(
        &self,
        scaler: &std::sync::Arc<super::controller::PoolScaler>,
        st: &mut super::controller::ScalerState,
        runtime: &std::sync::Arc<crate::runtime::Runtime>,
        now: tokio::time::Instant,
    ) {
        scaler.tick_instances(st, runtime, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted() {
        assert_eq!(substitute("--port={port}", 3100, "web-1"), "--port=3100");
        assert_eq!(substitute("{instance}.log", 3100, "web-1"), "web-1.log");
    }

    #[test]
    fn bare_names_fall_back_to_path() {
        assert_eq!(
            resolve_program("definitely-not-here-xyz"),
            PathBuf::from("definitely-not-here-xyz")
        );
        assert_eq!(resolve_program("/bin/sh"), PathBuf::from("/bin/sh"));
    }

    /// Whether process `pid` still runs (a zombie waiting for its parent does not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn stop_ends_the_instance_and_what_it_started() {
        let yaml = concat!(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    pool: web\n",
            "pools:\n  web:\n    autoscale:\n",
            "      command: [sh, -c, 'sleep 300 & wait']\n",
            "      ports: 3100-3199\n      target: { cpu_percent: 70 }\n",
        );
        let config =
            crate::config::load_str(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let cfg = config.pools[0].autoscale.clone().expect("autoscale");
        let mut child = spawn(&cfg, "web", "web-1", 3100).expect("spawn sh");
        // The shell's background child, from the kernel's list of its children.
        let shell = child.id().expect("running") as i32;
        let sleeper = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let children =
                    std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
                        .unwrap_or_default();
                if let Some(pid) = children.split_whitespace().next() {
                    return pid.parse::<i32>().expect("a pid");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the shell starts its child");
        assert!(running(sleeper));
        // Bounded: without the group, SIGTERM would miss the shell and `stop` would wait on.
        let how = tokio::time::timeout(
            Duration::from_secs(60),
            stop(&mut child, Duration::from_secs(5)),
        )
        .await
        .expect("stop returns");
        assert!(how.starts_with("exited after SIGTERM"), "{how}");
        // The sleeper got SIGTERM with its group (sh does not pass it on): it is gone once
        // reaped by init (bounded wait: reaping is asynchronous).
        tokio::time::timeout(Duration::from_secs(20), async {
            while running(sleeper) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the instance's own child was stopped with it");
    }
}
