//! A real `redis-server` for tests: loopback, no persistence, killed on drop (continued
//! first if a test stopped it), plus `redis-cli` and free-port helpers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::Proc;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `redis-cli -p PORT ARGS...`: its stdout, or "" when it cannot run.
pub fn cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    extra: Vec<String>,
    stopped: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(Vec::new())
    }

    /// With extra `redis-server` arguments (e.g. cluster mode).
    pub fn start_with(extra: Vec<String>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
            extra,
            stopped: false,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and wait until it answers PING (10 s at most).
    pub fn restart(&mut self) {
        let child = super::command("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.proc = Some(Proc {
            child,
            log: Default::default(),
        });
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill it (a later `restart` brings it back on the same port).
    pub fn stop(&mut self) {
        self.proc.take();
        self.stopped = false;
    }

    /// Send a signal (SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal(&mut self, sig: i32) {
        if let Some(p) = &self.proc {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(p.pid() as i32, sig) };
            self.stopped = sig == libc::SIGSTOP;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
        }
    }
}
