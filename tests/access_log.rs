//! Access logs and X-Request-Id end to end: JSON and combined lines in a file and on stdout,
//! what they say (client, method, host, path, status, bytes, duration, pool, backend,
//! tries, TLS, request id), request ids passed to backends and trusted only from trusted
//! proxies, reopening on SIGUSR1, and a log that cannot be written never slowing requests.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{echo, Autolb, Client};

/// Two listeners: `web` (no trusted proxies) and `edge` (127.0.0.1 trusted), pool `web`
/// with `backends`; `access_log` is the YAML value of the key.
fn yaml(access_log: &str, backends: &[SocketAddr], pool_extra: &str) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
access_log: {access_log}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
  - {{ name: edge, listen: \"127.0.0.1:0\", protocol: http, pool: web, trusted_proxies: [127.0.0.1] }}
pools:
  web:
    balance: round_robin
{pool_extra}    backends:
{}",
        common::backend_list(backends, "")
    )
}

/// The lines of `path` once it has at least `n`, parsed as JSON.
async fn json_lines(path: &Path, n: usize) -> Vec<Value> {
    common::wait_until(10, &format!("{n} access log lines"), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn json_lines_say_what_happened_and_request_ids_reach_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let a = echo("a");
    let lb = Autolb::start(&yaml(&format!("{{ path: {log:?} }}"), &[a.addr], ""));

    let mut client = Client::connect(lb.addr("web")).await;
    let r = client
        .get_with(
            "/echo?x=1",
            &[
                ("user-agent", "test-agent/1"),
                ("referer", "http://r.example/"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.headers["x-request-id"].to_str().expect("id").to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // The backend got the same id.
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        id.as_str(),
        "{}",
        r.text()
    );

    let lines = json_lines(&log, 1).await;
    let l = &lines[0];
    assert_eq!(l["request_id"], id.as_str());
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], lb.addr("web").to_string());
    assert_eq!(l["path"], "/echo?x=1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], r.body.len() as u64);
    assert!(
        l["duration_ms"]
            .as_f64()
            .is_some_and(|d| d > 0.0 && d < 5000.0),
        "{l}"
    );
    assert_eq!(l["listener"], "web");
    assert_eq!(l["pool"], "web");
    assert_eq!(l["backend"], a.addr.to_string());
    assert_eq!(l["tries"], 1);
    assert_eq!(l["tls"], Value::Null);
    assert_eq!(l["user_agent"], "test-agent/1");
    assert_eq!(l["referer"], "http://r.example/");
    assert_eq!(l["complete"], true);
    assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");

    // An untrusted client's id is replaced; a trusted proxy's is kept and passed on.
    let r = client
        .get_with("/echo", &[("x-request-id", "client-chosen")])
        .await;
    assert_ne!(r.headers["x-request-id"], "client-chosen");
    assert_ne!(r.json()["headers"]["x-request-id"], "client-chosen");
    let mut edge = Client::connect(lb.addr("edge")).await;
    let r = edge.get_with("/echo", &[("x-request-id", "edge-42")]).await;
    assert_eq!(r.headers["x-request-id"], "edge-42");
    assert_eq!(r.json()["headers"]["x-request-id"], "edge-42");
    let lines = json_lines(&log, 3).await;
    assert_eq!(lines[2]["request_id"], "edge-42");
    assert_eq!(lines[2]["listener"], "edge");

    // autolb's own answers are logged too (no backend, no tries).
    drop(a);
    let r = client.get("/").await;
    assert_eq!(r.status, 502);
    let lines = json_lines(&log, 4).await;
    assert_eq!(lines[3]["status"], 502);
    assert_eq!(lines[3]["backend"], Value::Null);
    assert_eq!(lines[3]["tries"], 0);
    assert_eq!(lines[3]["pool"], "web");
}

#[tokio::test]
async fn retries_show_in_tries_and_combined_lines_are_parseable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    // A port nobody listens on, then a real backend: the first pick fails to connect.
    let dead_addr = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let a = echo("a");
    let lb = Autolb::start(&yaml(
        &format!("{{ format: combined, path: {log:?} }}"),
        &[dead_addr, a.addr],
        "",
    ));
    let mut client = Client::connect(lb.addr("web")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = client
            .get_with("/status/201?q=%22x%22", &[("user-agent", "ua \"quoted\"")])
            .await;
        assert_eq!(r.status, 201);
        ids.push(r.headers["x-request-id"].to_str().expect("id").to_string());
    }
    let text = common::wait_until(10, "two combined lines", || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 2).then_some(t)
    })
    .await;
    let lines: Vec<&str> = text.lines().collect();
    for (line, id) in lines.iter().zip(&ids) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(" +0000] \"GET /status/201?q=%22x%22 HTTP/1.1\" 201 "),
            "{line}"
        );
        assert!(
            line.contains(" \"-\" \"ua \\\"quoted\\\"\" host="),
            "{line}"
        );
        assert!(
            line.contains(&format!(" listener=web pool=web backend={} ", a.addr)),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                " tls=- rid={id} enc=- complete=true orig=- req_bytes=0 "
            )),
            "{line}"
        );
        assert!(
            line.ends_with(" abort=- cache=- cert=-") && line.contains(" ttfb_ms="),
            "{line}"
        );
    }
    // Round robin sends at least one of them to the dead backend first: two tries.
    assert!(lines.iter().any(|l| l.contains(" tries=2 ")), "{text}");
}

#[tokio::test]
async fn sigusr1_reopens_the_file_after_logrotate_moved_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let a = echo("a");
    let mut lb = Autolb::start(&yaml(&format!("{{ path: {log:?} }}"), &[a.addr], ""));
    let mut client = Client::connect(lb.addr("web")).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 200);
    }
    json_lines(&log, 5).await;
    std::fs::rename(&log, &rotated).expect("rotate");
    // Still writing to the moved file until told.
    assert_eq!(client.get("/").await.status, 200);
    json_lines(&rotated, 6).await;
    unsafe {
        libc::kill(lb.proc.pid() as i32, libc::SIGUSR1);
    }
    common::wait_until(10, "the reopen", || async {
        lb.proc
            .log()
            .contains("SIGUSR1: reopening the access log")
            .then_some(())
    })
    .await;
    // Lines may still land in the old file until the writer saw the signal: count both.
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 200);
    }
    common::wait_until(10, "all 11 lines in the two files", || async {
        let old = std::fs::read_to_string(&rotated)
            .unwrap_or_default()
            .lines()
            .count();
        let new = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        (old + new == 11 && new >= 1).then_some(())
    })
    .await;
    assert!(
        lb.proc.child.try_wait().expect("wait").is_none(),
        "autolb still runs"
    );
}

#[tokio::test]
async fn a_log_that_cannot_be_written_never_slows_requests() {
    // A FIFO nobody reads: opening it for writing blocks the writer thread for good.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("cstring");
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let a = echo("a");
    let lb = Autolb::start(&yaml(
        &format!("{{ path: {fifo:?}, buffer: 8 }}"),
        &[a.addr],
        "",
    ));
    let mut client = Client::connect(lb.addr("web")).await;
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let dropped =
        common::tls::metric(&lb, "autolb_access_log_lines_total{result=\"dropped\"}").await;
    assert!(dropped >= 250, "dropped {dropped}");
    // And it still shuts down (the flush at exit gives up after its timeout).
    unsafe {
        libc::kill(lb.proc.pid() as i32, libc::SIGTERM);
    }
    let mut lb = lb;
    lb.proc.exited(15).await;
}

#[tokio::test]
async fn json_to_stdout_by_default() {
    let a = echo("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("autolb.yaml");
    std::fs::write(&config, yaml("{}", &[a.addr], "")).expect("write");
    let mut child = common::command(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&config)
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let proc = common::Proc {
        child,
        log: Default::default(),
    };
    // The listener's address from the log, then one request, then its line on stdout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let web: SocketAddr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("autolb started");
        if line.contains("listening") && line.contains("listener=web") {
            let addr = line
                .split("addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            break addr.expect("addr").trim_matches('"').parse().expect("addr");
        }
    };
    let (ltx, lrx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = ltx.send(line);
        }
    });
    let r = common::get(web, "/").await;
    assert_eq!(r.status, 200);
    let line = lrx
        .recv_timeout(Duration::from_secs(10))
        .expect("a line on stdout");
    let v: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["status"], 200);
    assert_eq!(
        v["request_id"],
        r.headers["x-request-id"].to_str().expect("id")
    );
    drop(proc);
}

#[tokio::test]
async fn https_requests_log_their_tls_version_and_protocol() {
    use common::tls;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let ca = tls::TestCa::new("access log CA");
    let pair = ca.issue(&["localhost"]).write(dir.path(), "site");
    let a = echo("a");
    let yaml = tls::https_config(&[pair], "", "", "", &[a.addr]).replace(
        "pools:\n",
        &format!("access_log: {{ path: {log:?} }}\npools:\n"),
    );
    let lb = Autolb::start(&yaml);
    let addr = lb.addr("secure");
    let stream = tls::connect(
        addr,
        "localhost",
        &tls::connector(&ca, &[b"http/1.1"], true),
    )
    .await
    .expect("TLS 1.2");
    let r = tls::get1(&mut tls::h1(stream).await, "localhost", "/").await;
    assert_eq!(r.status, 200);
    let stream = tls::connect(addr, "localhost", &tls::connector(&ca, &[b"h2"], false))
        .await
        .expect("TLS 1.3");
    let mut h2 = tls::h2(stream).await;
    let req = http::Request::get(format!("https://localhost:{}/", addr.port()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = tls::reply(h2.send_request(req).await.expect("h2 response")).await;
    assert_eq!(r.status, 200);
    let lines = json_lines(&log, 2).await;
    assert_eq!(
        (&lines[0]["tls"], &lines[0]["protocol"]),
        (&Value::from("TLSv1.2"), &Value::from("HTTP/1.1"))
    );
    assert_eq!(
        (&lines[1]["tls"], &lines[1]["protocol"]),
        (&Value::from("TLSv1.3"), &Value::from("HTTP/2.0"))
    );
    assert_eq!(lines[1]["host"], format!("localhost:{}", addr.port()));
    assert_eq!(lines[1]["listener"], "secure");
}
