//! What the logs tell about a request's time and bytes, end to end: the access log's
//! `queue_ms` (a wait in the pool's queue), `connect_ms` (a new connection; null on a
//! reused one), `ttfb_ms`, `request_bytes` and `abort` (client or backend broke the body
//! off), in JSON and combined lines; and autolb's own log as JSON (`AUTOLB_LOG_FORMAT=json`).

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{echo, Autolb, Client};

/// The lines of `path` once one of them satisfies `pick`, parsed as JSON.
async fn line_where(path: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    common::wait_until(10, what, || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|l| pick(l))
    })
    .await
}

fn path_is(l: &Value, p: &str) -> bool {
    l["path"] == p
}

#[tokio::test]
async fn access_lines_break_a_request_down_and_say_why_it_was_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let a = echo("a");
    // A backend that promises 1000 bytes, sends 10 and closes.
    let cut = common::raw_backend(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
    })
    .await;
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
access_log: {{ path: {log:?} }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
  - {{ name: cut, listen: \"127.0.0.1:0\", protocol: http, pool: cut }}
pools:
  web:
    limits: {{ max_inflight: 1, max_queue: 10, queue_timeout: 10s }}
    backends:
      - {{ address: \"{a}\" }}
  cut:
    retries: 0
    backends:
      - {{ address: \"{cut}\" }}
",
        a = a.addr,
    );
    let lb = Autolb::start(&yaml);
    let web = lb.addr("web");

    // The first request holds the pool's only slot for 300 ms; the second waits for it.
    let slow = tokio::spawn(async move { Client::connect(web).await.get("/delay/300").await });
    common::wait_until(10, "the slow request in flight", || async {
        let s = common::get(lb.admin, "/loadbalancer/status").await.json();
        (s["pools"][0]["queue"]["inflight"] == 1).then_some(())
    })
    .await;
    let mut c = Client::connect(web).await;
    assert_eq!(c.get("/").await.status, 200);
    assert_eq!(slow.await.expect("slow").status, 200);
    let first = line_where(&log, "the slow line", |l| path_is(l, "/delay/300")).await;
    let queued = line_where(&log, "the queued line", |l| path_is(l, "/")).await;
    assert_eq!(first["queue_ms"], 0.0, "{first}");
    let ttfb = first["ttfb_ms"].as_f64().expect("ttfb_ms");
    assert!(ttfb >= 300.0, "{first}");
    assert!(first["duration_ms"].as_f64() >= Some(ttfb), "{first}");
    assert!(
        first["connect_ms"].as_f64().is_some(),
        "a new connection: {first}"
    );
    assert!(
        first["abort"].is_null() && first["request_bytes"] == 0,
        "{first}"
    );
    let q = queued["queue_ms"].as_f64().expect("queue_ms");
    assert!(
        q > 0.0 && q <= queued["duration_ms"].as_f64().expect("duration"),
        "{queued}"
    );
    // The slow request's connection came back to the pool: reused, nothing to connect.
    assert!(queued["connect_ms"].is_null(), "{queued}");

    // A body in: counted.
    let post = http::Request::post("/echo")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1234
        ])))
        .expect("request");
    assert_eq!(c.request(post).await.status, 200);
    let l = line_where(&log, "the POST line", |l| l["method"] == "POST").await;
    assert_eq!(l["request_bytes"], 1234, "{l}");

    // The client goes away in the middle of a large body.
    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(b"GET /bytes/50000000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(n > 0);
    drop(s);
    let l = line_where(&log, "the abandoned line", |l| {
        path_is(l, "/bytes/50000000")
    })
    .await;
    assert_eq!(l["abort"], "client_closed", "{l}");
    assert_eq!(l["complete"], false, "{l}");

    // The backend breaks its body off.
    let mut c = Client::connect(lb.addr("cut")).await;
    let _ = c.try_get("/cut").await;
    let l = line_where(&log, "the cut line", |l| path_is(l, "/cut")).await;
    assert_eq!(l["abort"], "backend_closed", "{l}");
    assert_eq!(l["status"], 200, "{l}");
}

#[tokio::test]
async fn combined_lines_carry_the_same_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let a = echo("a");
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
access_log: {{ format: combined, path: {log:?} }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    backends:
      - {{ address: \"{}\" }}
",
        a.addr
    );
    let lb = Autolb::start(&yaml);
    let mut c = Client::connect(lb.addr("web")).await;
    assert_eq!(c.get("/delay/20").await.status, 200);
    let line = common::wait_until(10, "a combined line", || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await;
    let kv = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {line}"))
            .to_string()
    };
    assert_eq!(kv("req_bytes"), "0");
    assert_eq!(kv("queue_ms"), "0.000");
    assert!(kv("connect_ms").parse::<f64>().is_ok(), "{line}");
    assert!(
        kv("ttfb_ms").parse::<f64>().is_ok_and(|t| t >= 20.0),
        "{line}"
    );
    assert_eq!(kv("abort"), "-");
}

#[tokio::test]
async fn autolb_logs_json_lines_on_request() {
    let a = echo("a");
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n      - {{ address: \"{}\" }}\n      - {{ address: \"127.0.0.1:1\" }}\n",
            a.addr
        ),
    );
    let lb = Autolb::start_with_env(&yaml, &[("AUTOLB_LOG_FORMAT", "json")]);
    // A request that fails over logs a warning with its fields.
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..2 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert!(
        lb.proc.log_shows("backend failed", Duration::from_secs(10)),
        "{}",
        lb.proc.log()
    );
    let log = lb.proc.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "autolb started")
        .expect("the start line");
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(started["target"]
        .as_str()
        .is_some_and(|t| t.starts_with("autolb")));
    let failed = lines
        .iter()
        .find(|l| l["message"] == "backend failed")
        .expect("the failure line");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["pool"], "web");
    assert_eq!(failed["backend"], "127.0.0.1:1");
    assert!(failed["error"].as_str().is_some(), "{failed}");
}
