//! Test harness: real `autolb` and `autolb-echo` processes on 127.0.0.1 ephemeral ports,
//! killed when their guard drops (even when a test panics), and a small HTTP client.
#![allow(dead_code)]

pub mod cdp;
pub mod pebble;
pub mod prom;
pub mod redis;
#[allow(unused_imports)]
pub use redis::free_port;
pub mod relay;
pub mod script;
pub mod shared;
pub mod tls;
pub mod wait;
#[allow(unused_imports)]
pub use wait::{
    poll_blocking, poll_for, wait_blocking, wait_blocking_or, wait_for_value, wait_until,
    wait_until_or, Deadline,
};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const AUTOLB: &str = env!("CARGO_BIN_EXE_autolb");
pub const ECHO: &str = env!("CARGO_BIN_EXE_autolb-echo");

/// A child process killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `secs`) for the process to exit by itself; its status. Fails with its
    /// log when it is still running.
    pub async fn exited(&mut self, secs: u64) -> std::process::ExitStatus {
        let child = &mut self.child;
        let log = &self.log;
        wait_until_or(
            secs,
            || std::future::ready(child.try_wait().expect("wait")),
            || format!("still running:\n{}", log_text(log)),
        )
        .await
    }

    pub fn log(&self) -> String {
        log_text(&self.log)
    }

    /// Whether the log shows `text` within `within` (stderr is read on another thread, so
    /// a line can arrive a moment after what it reports is already visible).
    pub fn log_shows(&self, text: &str, within: Duration) -> bool {
        poll_blocking(within, Duration::from_millis(10), || {
            self.log().contains(text).then_some(())
        })
        .is_some()
    }
}

/// What a collected output stream (`Proc::log`, `collect`) holds so far.
pub fn log_text(log: &Mutex<String>) -> String {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command whose process dies with the test thread that started it.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Read `stream` line by line into `log` on a thread; `on_line` sees each line.
fn drain<R: std::io::Read + Send + 'static>(
    stream: R,
    log: Arc<Mutex<String>>,
    tx: std::sync::mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    });
}

/// Collect a child's output into a shared string (read on a thread).
pub fn collect<R: std::io::Read + Send + 'static>(stream: R) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, _rx) = std::sync::mpsc::channel();
    drain(stream, log.clone(), tx);
    log
}

/// An `autolb-echo` instance.
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    pub proc: Proc,
}

pub fn echo(name: &str) -> Echo {
    let mut child = command(ECHO)
        .args(["--port", "0", "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn autolb-echo");
    let stdout = child.stdout.take().expect("stdout");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    drain(stdout, log.clone(), tx);
    let proc = Proc { child, log };
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("autolb-echo printed its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Echo {
        addr,
        name: name.into(),
        proc,
    }
}

/// A running `autolb` with its config in a temporary directory.
pub struct Autolb {
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub proc: Proc,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Autolb {
    pub fn start(yaml: &str) -> Autolb {
        Autolb::start_with_env(yaml, &[])
    }

    /// Start with extra environment variables (e.g. the admin token).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Autolb {
        Autolb::start_wrapped(&[], yaml, env)
    }

    /// Start `autolb` as the last argument of `wrapper` (e.g. `unshare --pid --fork`);
    /// an empty wrapper starts it directly.
    pub fn start_wrapped(wrapper: &[&str], yaml: &str, env: &[(&str, &str)]) -> Autolb {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("autolb.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Autolb::start_file_wrapped(wrapper, dir, config, env)
    }

    /// Start on a config file the test laid out itself (symlinks, ...) under `dir`, which
    /// lives as long as the process.
    pub fn start_file(dir: tempfile::TempDir, config: PathBuf, env: &[(&str, &str)]) -> Autolb {
        Autolb::start_file_wrapped(&[], dir, config, env)
    }

    /// Like `start_file`, running `program`: a copy of autolb installed elsewhere.
    pub fn start_program(
        program: &Path,
        dir: tempfile::TempDir,
        config: PathBuf,
        env: &[(&str, &str)],
    ) -> Autolb {
        Autolb::start_with(program, &[], dir, config, env)
    }

    fn start_file_wrapped(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        config: PathBuf,
        env: &[(&str, &str)],
    ) -> Autolb {
        Autolb::start_with(Path::new(AUTOLB), wrapper, dir, config, env)
    }

    /// `program run -c CONFIG`, behind `wrapper` (a program and its arguments) if any.
    fn start_with(
        program: &Path,
        wrapper: &[&str],
        dir: tempfile::TempDir,
        config: PathBuf,
        env: &[(&str, &str)],
    ) -> Autolb {
        let program = program.to_str().expect("utf-8 path");
        let mut cmd = match wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut c = command(wrapper);
                c.args(args).arg(program);
                c
            }
            None => command(program),
        };
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env("AUTOLB_LOG", "info")
            // The upgrade socket (`$TMPDIR/autolb-*.sock`) goes with the config: a killed
            // autolb cannot remove it, its temporary directory is removed for it.
            .env("TMPDIR", dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn autolb");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        drain(stderr, log.clone(), tx);
        let proc = Proc { child, log };
        let mut listeners = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!("autolb did not start; log:\n{}", proc.log()),
            };
            if line.contains("admin listening") {
                admin = field(&line, "addr").and_then(|a| a.parse().ok());
            } else if line.contains(" listening") || line.contains("\"listening") {
                if let (Some(n), Some(a)) = (field(&line, "listener"), field(&line, "addr")) {
                    listeners.insert(n, a.parse().expect("listener addr"));
                }
            }
            if line.contains("autolb started") {
                break;
            }
        }
        Autolb {
            listeners,
            admin: admin.expect("admin address in log"),
            proc,
            config,
            _dir: dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.proc.pid())
    }
}

/// `key=value` from a log line (value may be quoted).
/// `key=value` of a text log line, or `"key": value` of a JSON one (`AUTOLB_LOG_FORMAT=json`).
fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return match &v[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
    }
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let v = rest.split_whitespace().next()?;
    Some(v.trim_matches('"').to_string())
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Run `autolb check -c FILE`: (exit code, stdout, stderr).
pub fn check(path: &Path) -> (i32, String, String) {
    let out = Command::new(AUTOLB)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run autolb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    tx: http1::SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub struct ClientError {
    /// The connection was closed by the server while idle (the keep-alive race): a client
    /// may resend an idempotent request on a new connection.
    pub resendable: bool,
    pub message: String,
}

impl Client {
    /// A GET that reports connection errors instead of panicking.
    pub async fn try_get(&mut self, path: &str) -> Result<Reply, ClientError> {
        let closed = |e: hyper::Error| ClientError {
            resendable: e.is_canceled() || e.is_closed() || e.is_incomplete_message(),
            message: e.to_string(),
        };
        self.tx.ready().await.map_err(closed)?;
        let req = http::Request::get(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self.tx.send_request(req).await.map_err(closed)?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError {
                resendable: false,
                message: format!("body: {e}"),
            })?
            .to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client { tx, addr }
    }

    pub async fn request(&mut self, req: http::Request<Full<Bytes>>) -> Reply {
        self.tx.ready().await.expect("connection ready");
        let resp = tokio::time::timeout(Duration::from_secs(30), self.tx.send_request(req))
            .await
            .expect("response within 30s")
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = http::Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.request(b.body(Full::new(Bytes::new())).expect("request"))
            .await
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path).await
}

/// A config with the admin port and one `http` listener `web` (falling back to pool `web`),
/// both on 127.0.0.1:0, followed by `rest` (top-level `routes:` and `pools:` YAML).
/// `listener_extra` is appended inside the listener's flow mapping (", key: value").
pub fn config(threads: usize, listener_extra: &str, rest: &str) -> String {
    format!(
        "threads: {threads}
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web{listener_extra} }}
{rest}"
    )
}

/// `backends:` entries (indented for a pool) for these addresses, each with `extra` inside.
pub fn backend_list(addrs: &[SocketAddr], extra: &str) -> String {
    addrs
        .iter()
        .map(|a| format!("      - {{ address: \"{a}\"{extra} }}\n"))
        .collect()
}

/// A hyper HTTP/1.1 backend in this test process, answering with `handler`.
pub async fn hyper_backend<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    raw_backend(move |stream| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

/// A TCP backend in this test process: `serve` runs for each accepted connection.
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// A WebSocket client connection (tokio-tungstenite over plain TCP).
pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Open a WebSocket to `ws://addr{path}` with extra request headers (e.g. a cookie); returns
/// the socket and the 101 response head. Panics unless the handshake succeeds within 10 s.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (Ws, http::Response<Option<Vec<u8>>>) {
    try_ws_connect(addr, path, headers)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}{path}: {e}"))
}

/// Like `ws_connect`, but returns the handshake error (e.g. a non-101 answer).
pub async fn try_ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("ws request");
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    let stream = TcpStream::connect(addr).await.expect("connect");
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)),
    )
    .await
    .expect("WebSocket handshake within 10s")
}

/// The next message that is not a ping or pong, within `secs` seconds (`None`: the stream
/// ended).
pub async fn ws_next(ws: &mut Ws, secs: u64) -> Option<tokio_tungstenite::tungstenite::Message> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {secs}s"));
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// The first text message of a WebSocket (autolb-echo's `/ws` sends its name first).
pub async fn ws_text(ws: &mut Ws) -> String {
    match ws_next(ws, 10).await {
        Some(tokio_tungstenite::tungstenite::Message::Text(t)) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The `Set-Cookie` value of a response for cookie `name` (just `name=value`), if any.
pub fn set_cookie(headers: &http::HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or_default().to_string();
            (pair, v.to_string())
        })
}

/// A POST to the admin API as curl or `autolb` sends it: `Content-Type: application/json`,
/// the bearer `token` if given, and `headers` (e.g. a browser's `Origin`) after those.
pub async fn admin_post(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = http::Request::post(path)
        .header("host", admin.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    Client::connect(admin).await.request(req).await
}

/// `POST /scaling/manual` for pool `web` with `token`: `n` instances (202 expected).
pub async fn scale_to(lb: &Autolb, token: &str, n: u32) {
    let body = format!(r#"{{"pool":"web","instances":{n},"reason":"test"}}"#);
    let r = admin_post(lb.admin, "/scaling/manual", Some(token), &[], &body).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

/// The instances `/cluster/status` lists.
pub async fn instances(lb: &Autolb) -> Vec<serde_json::Value> {
    get(lb.admin, "/cluster/status").await.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The first pool of `lb`'s `/scaling/status`.
pub async fn scaling(lb: &Autolb) -> serde_json::Value {
    get(lb.admin, "/scaling/status").await.json()["pools"][0].clone()
}

/// Poll `/scaling/status` until `cond` holds, for at most `secs`; fails with the last status
/// and autolb's log.
pub async fn wait_scaling(
    lb: &Autolb,
    secs: u64,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_value(
        secs,
        || scaling(lb),
        cond,
        |s| format!("never {what}: {s:#}\n{}", lb.proc.log()),
    )
    .await
}

/// Wait until `listener` of `lb` has no open connection (its gauge, on `/metrics`).
pub async fn wait_no_connections(lb: &Autolb, listener: &str) {
    let gauge = format!("autolb_downstream_connections{{listener=\"{listener}\"}} 0");
    wait_until(30, "no connection left open", || async {
        get(lb.admin, "/metrics")
            .await
            .text()
            .contains(&gauge)
            .then_some(())
    })
    .await;
}
