//! Differential test of path and Host normalization against nginx (the Debian package):
//! nginx runs with `location` and `server_name` blocks equivalent to a set of autolb routes,
//! every request target of `tests/corpus/paths/` and every Host of `tests/corpus/hosts/` is
//! sent, byte for byte the same, to both, and the routing decisions must agree, or autolb
//! must refuse (4xx) where nginx is laxer. autolb routing somewhere nginx refuses, or to
//! another pool, fails the test.
//!
//! nginx matches the longest `location` prefix, autolb the first route: the routes are
//! listed longest first, which makes the two equivalent. nginx decodes every
//! percent-encoding before matching and autolb only unreserved ones, which cannot change a
//! match against prefixes made of unreserved characters (the one with `%C3%A9` is matched
//! by nginx as `é`, the same bytes decoded).
//!
//! `.ci/run` installs nginx; without it the test fails in CI (`CI` set) and otherwise skips,
//! saying so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// (pool, autolb `path_prefix`, nginx `location`), longest prefix first.
const PATH_ROUTES: &[(&str, &str, &str)] = &[
    ("secret", "/admin/secret", "/admin/secret"),
    ("cafe", "/caf%C3%A9", "/caf\u{e9}"),
    ("apiv1", "/api/v1/", "/api/v1/"),
    ("static", "/static/", "/static/"),
    ("admin", "/admin", "/admin"),
];
/// (pool, autolb route `host`, nginx `server_name`): every path of these hosts.
const HOST_ROUTES: &[(&str, &str)] = &[("hostadmin", "admin.example"), ("wild", "*.wild.example")];
/// The listener's pool, nginx's `location /` of the default server.
const DEFAULT: &str = "web";

/// A routing decision: the pool that answered, or the status of a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Pool(String),
    Refused(u16),
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Decision::Pool(p) => p.clone(),
            Decision::Refused(s) => format!("refused {s}"),
        };
        f.pad(&text)
    }
}

fn nginx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTOLB_NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join("nginx"))
        .find(|p| p.is_file());
    found
}

fn nginx_config(dir: &Path) -> String {
    let d = dir.display();
    let sock = format!("unix:{d}/nginx.sock");
    let mut locations = String::new();
    for (pool, _, location) in PATH_ROUTES {
        locations.push_str(&format!(
            "        location {location} {{ return 200 \"{pool}\"; }}\n"
        ));
    }
    let mut servers = String::new();
    for (pool, name) in HOST_ROUTES {
        servers.push_str(&format!(
            "    server {{\n        listen {sock};\n        server_name {name};\n        location / {{ return 200 \"{pool}\"; }}\n    }}\n"
        ));
    }
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {sock} default_server;
        server_name www.example;
        location / {{ return 200 \"{DEFAULT}\"; }}
{locations}    }}
{servers}}}
"
    )
}

/// A backend answering its pool's name (then the path it got).
async fn named_backend(pool: &'static str) -> SocketAddr {
    common::hyper_backend(move |req| async move {
        http::Response::new(Full::new(Bytes::from(format!("{pool} {}", req.uri()))))
    })
    .await
}

async fn start_autolb() -> common::Autolb {
    let mut routes = String::from("routes:\n");
    let mut pools = String::from("pools:\n");
    for (pool, host) in HOST_ROUTES {
        routes.push_str(&format!("  - {{ host: \"{host}\", pool: {pool} }}\n"));
    }
    for (pool, prefix, _) in PATH_ROUTES {
        routes.push_str(&format!(
            "  - {{ path_prefix: \"{prefix}\", pool: {pool} }}\n"
        ));
    }
    let names = HOST_ROUTES
        .iter()
        .map(|(p, _)| *p)
        .chain(PATH_ROUTES.iter().map(|(p, _, _)| *p))
        .chain([DEFAULT]);
    for pool in names {
        let addr = named_backend(pool).await;
        pools.push_str(&format!(
            "  {pool}: {{ backends: [{{ address: \"{addr}\" }}] }}\n"
        ));
    }
    common::Autolb::start(&common::config(1, "", &format!("{routes}{pools}")))
}

/// Send one raw request and read the decision from the answer (a refusal is any 4xx; a
/// connection closed without a status line counts as a 400).
async fn decide<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    target: &[u8],
    host: &[u8],
) -> Decision {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(host);
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    if s.write_all(&req).await.is_err() {
        return Decision::Refused(400);
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("an answer within 20s");
    if read.is_err() && buf.is_empty() {
        return Decision::Refused(400);
    }
    let text = String::from_utf8_lossy(&buf);
    let Some(status) = text.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()) else {
        return Decision::Refused(400);
    };
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match status {
        200 => Decision::Pool(body.split(' ').next().unwrap_or("").to_string()),
        s if (400..500).contains(&s) => Decision::Refused(s),
        s => panic!("unexpected status {s}: {text}"),
    }
}

/// The lines of every file of `tests/corpus/DIR`, as bytes.
fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).expect("corpus file");
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 60 {
        let head: String = s.chars().take(60).collect();
        format!("{head}... ({} bytes)", bytes.len())
    } else {
        s.into_owned()
    }
}

#[tokio::test]
async fn routing_agrees_with_nginx_or_autolb_refuses() {
    let Some(nginx) = nginx_binary() else {
        let why = "nginx is not installed (apt-get install nginx; .ci/run installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("the nginx differential test cannot run in CI: {why}");
        }
        eprintln!("SKIPPED routing_agrees_with_nginx_or_autolb_refuses: {why}");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_config(dir.path())).expect("write nginx.conf");
    let sock = dir.path().join("nginx.sock");
    let mut child = common::command(&nginx.display().to_string())
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", nginx.display()));
    let stderr = common::collect(child.stderr.take().expect("stderr"));
    let mut nginx_proc = common::Proc { child, log: stderr };
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    let d = common::Deadline::after(20, "nginx to listen");
    while tokio::net::UnixStream::connect(&sock).await.is_err() {
        if let Ok(Some(status)) = nginx_proc.child.try_wait() {
            panic!(
                "nginx exited ({status}): {}\n{}",
                nginx_proc.log(),
                error_log()
            );
        }
        d.tick_or(error_log).await;
    }
    let lb = start_autolb().await;
    let addr = lb.addr("web");

    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = corpus("paths")
        .into_iter()
        .map(|t| (t, b"www.example".to_vec()))
        .collect();
    cases.extend(corpus("hosts").into_iter().map(|h| (b"/x".to_vec(), h)));
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());

    let (mut same, mut stricter, mut wrong) = (0, 0, Vec::new());
    let mut table = String::new();
    for (target, host) in &cases {
        let unix = tokio::net::UnixStream::connect(&sock).await.expect("nginx");
        let theirs = decide(unix, target, host).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("autolb");
        let ours = decide(tcp, target, host).await;
        let verdict = match (&theirs, &ours) {
            (a, b) if a == b => "same",
            (Decision::Refused(_), Decision::Refused(_)) => "same",
            (Decision::Pool(_), Decision::Refused(_)) => "autolb refuses",
            _ => "WRONG",
        };
        match verdict {
            "same" => same += 1,
            "autolb refuses" => stricter += 1,
            _ => wrong.push((show(target), show(host), theirs.clone(), ours.clone())),
        }
        table.push_str(&format!(
            "{verdict:>15}  nginx {theirs:<22} autolb {ours:<22} Host {:<22} {}\n",
            format!("{:?}", show(host)),
            show(target)
        ));
    }
    println!(
        "{table}{same} same, {stricter} refused by autolb only, {} wrong",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "autolb routed differently from nginx (target, host, nginx, autolb):\n{wrong:#?}\n\n{table}"
    );
    // The corpus must exercise routing, not only refusals.
    let routed = cases.len() - stricter;
    assert!(
        same >= 60 && routed >= 60,
        "{same} same, {stricter} refused"
    );
    drop(nginx_proc);
}
