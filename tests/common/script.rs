//! Running one of the repository's Python scripts (`bench/run`, `bench/seed`, `bench/soak`)
//! from a test: bounded in time, killed with the test, its stdout collected.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `python3 SCRIPT ARGS...` in the repository, or `None` (after saying so) when python3 is
/// not installed.
pub fn python(script: &str, args: &[&str]) -> Option<Command> {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed ({script} is a python3 script)");
        return None;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/{script}"))
        .args(args)
        .current_dir(root);
    Some(cmd)
}

/// Run `cmd` until it exits or `limit` passes (then SIGTERM, so that the script stops what
/// it started, and SIGKILL 5 s later): its exit status (`None`: it did not finish in time)
/// and its stdout. Its stderr goes to the test's.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; the script (and, through its own PDEATHSIG, its
    // children) dies with this test even if the test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start the script");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            // SAFETY: kill only sends a signal to the child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap_or_default())
}
