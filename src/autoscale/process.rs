//! The `process` provider: start an instance from the pool's command (with `{port}` and
//! `{instance}` substituted, `PORT` set, output sent to the log), and stop it: SIGTERM to
//! its process group, then SIGKILL after a grace period.
// pre_exec (setsid/prctl in the child) and kill(2) of a process group have no safe API.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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
    let Some((program, args)) = cfg.command.split_first() else {
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
        .kill_on_drop(true);
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(dir);
    }
    // Read here, in autolb: the child compares its parent against it. (Comparing against
    // 1 would kill every instance of an autolb that is itself PID 1, as in a container.)
    let autolb = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
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

/// Send `signal` to the child's process group.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid targets the process group; no memory involved.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// SIGTERM the instance's group, wait up to `grace`, then SIGKILL it. Returns how it ended.
pub async fn stop(child: &mut Child, grace: Duration) -> String {
    let Some(pid) = child.id() else {
        return "already exited".into();
    };
    signal_group(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => format!("exited after SIGTERM ({status})"),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            signal_group(pid, libc::SIGKILL);
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
}
