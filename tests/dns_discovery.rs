//! DNS discovery through the real program against a real DNS server: `dnsmasq`, started by
//! the test on a free loopback port, serves SRV and A records; autolb asks it through
//! `discovery.resolver`. SRV records give each member's port and weight (only the lowest
//! priority counts), targets are resolved to A records again every round, a changed answer
//! is followed after its TTL (2 s) although `interval` is an hour, and `dns: NAME:PORT`
//! follows A records the same way. `.ci/run` installs dnsmasq (Debian's dnsmasq-base).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{get, wait_until, Autolb, Proc};

/// An `autolb-echo` listening on `host:port` (None if that port is taken there).
struct Echo {
    addr: SocketAddr,
    _proc: Proc,
}

fn echo_on(host: &str, port: u16, name: &str) -> Option<Echo> {
    let mut child = common::command(common::ECHO)
        .args(["--host", host, "--port", &port.to_string(), "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn autolb-echo");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        log: Default::default(),
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).ok()?;
    let addr = line.trim().strip_prefix("listening on ")?.parse().ok()?;
    Some(Echo { addr, _proc: proc })
}

fn dnsmasq_program() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join("dnsmasq"))
        .find(|p| p.is_file());
    found.expect("dnsmasq (apt-get install dnsmasq-base; .ci/run installs it)")
}

/// A free port for UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq on 127.0.0.1:`port` with `srv` records (`name,target,port,priority,weight`) and
/// the A records of `hosts` (re-read on SIGHUP), answers valid for 2 s. None if it could
/// not bind the port.
fn dnsmasq(dir: &Path, port: u16, srv: &[String]) -> Option<Proc> {
    let hosts = dir.join("hosts");
    let mut cmd = common::command(dnsmasq_program().to_str().expect("path"));
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--local-ttl=2",
        "--log-facility=-",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--addn-hosts={}", hosts.display()))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
    .args(srv.iter().map(|s| format!("--srv-host={s}")));
    // As root it would switch to `nobody`, who cannot read the test's directory.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["--user=root", "--group=root"]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dnsmasq");
    let log = common::collect(child.stderr.take().expect("stderr"));
    let mut proc = Proc { child, log };
    let read = format!("read {}", hosts.display());
    let log = proc.log.clone();
    let started = common::wait_blocking_or(
        20,
        || {
            if proc.log().contains(&read) {
                Some(true)
            } else {
                proc.child.try_wait().ok().flatten().map(|_| false)
            }
        },
        || format!("dnsmasq not ready:\n{}", common::log_text(&log)),
    );
    if !started {
        eprintln!("dnsmasq did not start:\n{}", proc.log());
        return None;
    }
    Some(proc)
}

fn srv(target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("_http._tcp.api.test,{target},{port},{priority},{weight}")
}

/// `(address, weight)` of every backend of `pool`.
async fn members(lb: &Autolb, pool: &str) -> BTreeSet<(String, u64)> {
    let status = get(lb.admin, "/loadbalancer/status").await.json();
    let pools = status["pools"].as_array().cloned().unwrap_or_default();
    pools
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_members(lb: &Autolb, pool: &str, want: &[(SocketAddr, u64)]) {
    let want: BTreeSet<(String, u64)> = want.iter().map(|(a, w)| (a.to_string(), *w)).collect();
    let mut last = BTreeSet::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            last = members(lb, pool).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "pool {pool}: members {last:?}, want {want:?}; log:\n{}",
        lb.proc.log()
    );
}

/// Names answering on `listener` within a bounded number of requests, until `want` all
/// answered.
async fn answers(lb: &Autolb, listener: &str, want: &[&str]) {
    let addr = lb.addr(listener);
    wait_until(30, &format!("answers from {want:?}"), || async {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let r = get(addr, "/").await;
            if r.status == 200 {
                seen.insert(r.text());
            }
        }
        want.iter().all(|w| seen.contains(*w)).then_some(())
    })
    .await;
}

fn pool(name: &str, discovery: &str) -> String {
    format!(
        "  {name}:
    health_check: {{ type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    autoscale:
      provider: command
      scale: [\"true\"]
      discovery: {discovery}
      min: 1
      max: 10
      target: {{ inflight_per_instance: 50 }}
"
    )
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_and_changes_follow_the_ttl() {
    // `a` moves from 127.0.0.1 to 127.0.0.2 on the same port: start the second one first.
    let (a, a2) = (0..20)
        .find_map(|_| {
            let a2 = echo_on("127.0.0.2", 0, "a2")?;
            let a = echo_on("127.0.0.1", a2.addr.port(), "a")?;
            Some((a, a2))
        })
        .expect("a port free on 127.0.0.1 and 127.0.0.2");
    let b = echo_on("127.0.0.1", 0, "b").expect("echo b");
    let fallback = echo_on("127.0.0.1", 0, "fallback").expect("echo fallback");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("hosts"),
        "127.0.0.1 a.api.test\n127.0.0.1 b.api.test\n127.0.0.1 c.api.test\n",
    )
    .expect("hosts");
    let records = [
        srv("a.api.test", a.addr.port(), 0, 10),
        srv("b.api.test", b.addr.port(), 0, 30),
        // A higher priority value: only used when no record of priority 0 exists.
        srv("c.api.test", fallback.addr.port(), 1, 5),
    ];
    let port = free_port();
    let mut dns = dnsmasq(dir.path(), port, &records).expect("dnsmasq started");

    let resolver = format!("resolver: \"127.0.0.1:{port}\", interval: 1h");
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: api }}
  - {{ name: plain, listen: \"127.0.0.1:0\", protocol: http, pool: plain }}
pools:
{}{}",
        pool(
            "api",
            &format!("{{ dns_srv: _http._tcp.api.test, {resolver} }}")
        ),
        pool(
            "plain",
            &format!("{{ dns: \"a.api.test:{}\", {resolver} }}", a.addr.port())
        ),
    );
    let lb = Autolb::start(&yaml);
    wait_members(&lb, "api", &[(a.addr, 10), (b.addr, 30)]).await;
    wait_members(&lb, "plain", &[(a.addr, 1)]).await;
    answers(&lb, "web", &["a", "b"]).await;
    answers(&lb, "plain", &["a"]).await;

    // The target `a.api.test` moves: both pools follow after the TTL, not the hour.
    std::fs::write(
        dir.path().join("hosts"),
        "127.0.0.2 a.api.test\n127.0.0.1 b.api.test\n127.0.0.1 c.api.test\n",
    )
    .expect("hosts");
    unsafe { libc::kill(dns.pid() as i32, libc::SIGHUP) };
    wait_members(&lb, "api", &[(a2.addr, 10), (b.addr, 30)]).await;
    wait_members(&lb, "plain", &[(a2.addr, 1)]).await;
    answers(&lb, "web", &["a2", "b"]).await;
    answers(&lb, "plain", &["a2"]).await;

    // New SRV records (dnsmasq restarted on the same port): a new weight, one member
    // gone; then only the fallback priority is left, and it is used.
    drop(dns);
    dns = dnsmasq(
        dir.path(),
        port,
        &[srv("b.api.test", b.addr.port(), 0, 50), records[2].clone()],
    )
    .expect("dnsmasq restarted");
    wait_members(&lb, "api", &[(b.addr, 50)]).await;
    answers(&lb, "web", &["b"]).await;
    drop(dns);
    let _dns = dnsmasq(dir.path(), port, &[records[2].clone()]).expect("dnsmasq restarted");
    wait_members(&lb, "api", &[(fallback.addr, 5)]).await;
    answers(&lb, "web", &["fallback"]).await;
}
