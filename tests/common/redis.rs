//! Real Redis for tests: `redis-server` (loopback, no persistence, killed on drop, continued
//! first if a test stopped it), a Redis Cluster of masters and replicas made with
//! `redis-cli --cluster create`, a set of `redis-sentinel` processes, the least-privilege
//! ACL user autolb needs, and `redis-cli` and free-port helpers.

use std::path::Path;
use std::process::Stdio;

use super::Proc;

/// A loopback port nobody listens on right now, below the kernel's ephemeral range (in
/// 10,000-19,999), and
/// one this test binary has not handed out before. Below the ephemeral range, because a
/// port found free by bind-and-close inside it can be handed by the kernel to any other
/// `bind(0)` or outgoing connection of the tests running alongside before its server binds
/// it (a CI run failed so: `admin: cannot bind ...: Address already in use`); no `bind(0)`
/// and no outgoing connection takes a port below that range.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // 10,000-19,999: also below the fixed blocks some tests give autoscaled instances
    // (`ports: 23000-...` and up).
    let (low, high) = match ephemeral_low > 20_000 {
        true => (10_000, 20_000),
        // An unusual range: any port bind(0) gives (the old way).
        false => (0, 0),
    };
    for _ in 0..10_000 {
        let candidate = match high {
            0 => 0,
            _ => fastrand::u16(low..high),
        };
        let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
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

/// The rules of the least-privilege ACL user autolb needs (the same as documented in
/// docs/shared-state.md), after `ACL SETUSER NAME on >PASSWORD`.
pub const AUTOLB_ACL: &[&str] = &[
    "resetkeys",
    "~autolb:*",
    "~{autolb:*",
    "resetchannels",
    "&autolb:*",
    "-@all",
    "+ping",
    "+info",
    "+role",
    "+cluster|info",
    "+cluster|nodes",
    "+cluster|slots",
    "+asking",
    "+eval",
    "+get",
    "+set",
    "+mget",
    "+del",
    "+sadd",
    "+srem",
    "+smembers",
    "+incr",
    "+incrby",
    "+pexpire",
    "+publish",
    "+subscribe",
];

/// Create (or reset) the user `name` with `password` and exactly `AUTOLB_ACL` on the
/// server at `port` (through its default user).
pub fn acl_user(port: u16, name: &str, password: &str) {
    let pass = format!(">{password}");
    let mut args = vec!["ACL", "SETUSER", name, "reset", "on", pass.as_str()];
    args.extend_from_slice(AUTOLB_ACL);
    let out = cli(port, &args);
    assert_eq!(out.trim(), "OK", "ACL SETUSER on {port}: {out}");
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

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
        let port = self.port;
        wait(10, "redis-server did not start", || {
            cli(port, &["PING"]).trim() == "PONG"
        });
    }

    /// Kill it (SIGKILL, as `kill -9`; a later `restart` brings it back on the same port).
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

    /// Its `ROLE` (`master`, `slave`), "" when it does not answer.
    pub fn role(&self) -> String {
        cli(self.port, &["ROLE"])
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
        }
    }
}

/// Polls `cond` every 50 ms for at most `secs`; panics with `what` when it never holds.
pub fn wait(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    super::wait_blocking(secs, what, || cond().then_some(()))
}

/// A Redis Cluster on free loopback ports: `masters` masters with `replicas` replicas each.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Started, created, every slot served and every replica in sync. `extra`: more
    /// `redis-server` arguments for every node.
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u64, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_with(masters, replicas, node_timeout_ms, || extra.clone())
    }

    /// Like `start`, with the extra arguments of each node from `extra` (called once per
    /// node, in order).
    pub fn start_with(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
        mut extra: impl FnMut() -> Vec<String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_arg = dir.path().display().to_string();
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let bus = free_port();
            let mut args = vec![
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                format!("nodes-{bus}.conf"),
                "--cluster-node-timeout".into(),
                node_timeout_ms.to_string(),
                "--dir".into(),
                dir_arg.clone(),
            ];
            args.extend(extra());
            nodes.push(Redis::start_with(args));
        }
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        // `timeout`: redis-cli waits for the nodes to join for ever.
        let out = std::process::Command::new("timeout")
            .args(["60", "redis-cli", "--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes, _dir: dir };
        wait(30, "cluster never became ok", || c.ok());
        wait(30, "replicas never synced", || {
            c.nodes.iter().all(|n| {
                let info = cli(n.port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        c
    }

    /// Every node that answers says `cluster_state:ok`.
    pub fn ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            let info = cli(n.port, &["CLUSTER", "INFO"]);
            info.is_empty() || info.contains("cluster_state:ok")
        }) && self
            .nodes
            .iter()
            .any(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        let addr = addr.split('@').next().unwrap_or(addr);
        self.nodes.iter().position(|n| n.addr() == addr)
    }

    /// `CLUSTER NODES` lines as asked to node `via`: (id, address, flags, master id, slots).
    fn table(&self, via: usize) -> Vec<(String, String, String, String, String)> {
        cli(self.nodes[via].port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 8).then(|| {
                    (
                        f[0].to_string(),
                        f[1].split('@').next().unwrap_or(f[1]).to_string(),
                        f[2].to_string(),
                        f[3].to_string(),
                        f[8..].join(" "),
                    )
                })
            })
            .collect()
    }

    /// The master that serves `key` and its replica (indexes into `nodes`).
    pub fn master_and_replica_of_key(&self, key: &str) -> (usize, usize) {
        let slot: u16 = cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        let table = self.table(0);
        let master = table
            .iter()
            .find(|(_, _, flags, _, slots)| {
                flags.contains("master")
                    && slots.split_whitespace().any(|r| {
                        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                        let (lo, hi): (u16, u16) =
                            (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0));
                        (lo..=hi).contains(&slot)
                    })
            })
            .expect("a master serves the slot");
        let replica = table
            .iter()
            .find(|(_, _, flags, of, _)| flags.contains("slave") && *of == master.0)
            .expect("the master has a replica");
        (
            self.index_of(&master.1).expect("master index"),
            self.index_of(&replica.1).expect("replica index"),
        )
    }
}

/// `redis-sentinel` processes watching one master.
pub struct Sentinels {
    pub ports: Vec<u16>,
    _procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// `n` Sentinels watching `name` at `master_port` with `quorum`; returns once each knows
    /// `replicas` replicas and the `n - 1` other Sentinels (so that a failover can happen).
    pub fn start(
        n: usize,
        name: &str,
        master_port: u16,
        quorum: usize,
        down_after_ms: u64,
        replicas: usize,
    ) -> Sentinels {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = Vec::new();
        let mut procs = Vec::new();
        for i in 0..n {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            write_sentinel_conf(
                &conf,
                dir.path(),
                port,
                name,
                master_port,
                quorum,
                down_after_ms,
            );
            let child = super::command("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel (apt-get install redis-sentinel)");
            procs.push(Proc {
                child,
                log: Default::default(),
            });
            ports.push(port);
        }
        let count = |port: u16, what: &str| {
            cli(port, &["SENTINEL", what, name])
                .lines()
                .filter(|l| l.trim() == "name")
                .count()
        };
        wait(
            30,
            "the Sentinels never found each other and the replicas",
            || {
                ports
                    .iter()
                    .all(|p| count(*p, "replicas") == replicas && count(*p, "sentinels") == n - 1)
            },
        );
        Sentinels {
            ports,
            _procs: procs,
            _dir: dir,
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

fn write_sentinel_conf(
    conf: &Path,
    dir: &Path,
    port: u16,
    name: &str,
    master_port: u16,
    quorum: usize,
    down_after_ms: u64,
) {
    let text = format!(
        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
         sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
         sentinel down-after-milliseconds {name} {down_after_ms}\n\
         sentinel failover-timeout {name} 10000\n\
         sentinel parallel-syncs {name} 1\n",
        dir = dir.display()
    );
    std::fs::write(conf, text).expect("write sentinel.conf");
}
