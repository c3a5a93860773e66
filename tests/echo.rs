//! Integration tests of the `autolb-echo` binary over real TCP on 127.0.0.1.

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A running `autolb-echo`; killed and reaped on drop, even when the test panics.
struct Echo {
    child: Child,
    addr: SocketAddr,
}

impl Echo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Echo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_autolb-echo"));
        cmd.args(args)
            .env_remove("PORT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; it only makes the child die with this process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn autolb-echo");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut echo = Echo {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        echo.addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        echo
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        common::poll_blocking(limit, Duration::from_millis(10), || {
            child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Empty::<Bytes>::new().boxed()
}

/// One HTTP/1.1 keep-alive connection to the echo server.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    port: u16,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client { sender, port }
    }

    fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
    }

    async fn send(&mut self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = self.sender.send_request(req).await.expect("send request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = self.request("GET", path).body(empty()).expect("request");
        self.send(req).await
    }
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn root_and_health_on_one_keepalive_connection() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let mut c = Client::connect(echo.port()).await;

    let (status, headers, body) = c.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"e1");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-backend"], "e1");

    let (status, headers, body) = c.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "e1");
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "ok", "name": "e1"})
    );
}

#[tokio::test]
async fn echo_streams_body_and_reports_headers() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let mut c = Client::connect(echo.port()).await;

    // 3 MiB sent chunked, 48 frames of 64 KiB.
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let frames = (0..48).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let req = c
        .request("POST", "/echo?a=1&b=2")
        .header("x-rep", "one")
        .header("x-rep", "two")
        .header("X-Single", "solo")
        .body(body)
        .expect("request");
    let (status, headers, body) = c.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-backend"], "e1");
    let v = json(&body);
    assert_eq!(v["name"], "e1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo?a=1&b=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body_length"], 3_145_728);
    assert_eq!(v["headers"]["x-rep"], serde_json::json!(["one", "two"]));
    assert_eq!(v["headers"]["x-single"], "solo");
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");

    // Same connection, any method, no body.
    let req = c.request("DELETE", "/echo").body(empty()).expect("request");
    let (status, _, body) = c.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["body_length"], 0);
}

#[tokio::test]
async fn bytes_are_streamed_with_exact_length() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let mut c = Client::connect(echo.port()).await;
    let req = c
        .request("GET", "/bytes/5000000")
        .body(empty())
        .expect("request");
    let resp = c.sender.send_request(req).await.expect("send request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], "5000000");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut body = resp.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(
                    *b,
                    ((total + i as u64) % 256) as u8,
                    "byte {}",
                    total + i as u64
                );
            }
            total += data.len() as u64;
        }
    }
    assert_eq!(total, 5_000_000);

    let (status, headers, body) = c.get("/bytes/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "0");
    assert!(body.is_empty());
}

#[tokio::test]
async fn status_delay_not_found_and_errors() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let mut c = Client::connect(echo.port()).await;

    let (status, headers, body) = c.get("/status/503").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-backend"], "e1");
    assert_eq!(&body[..], b"status 503");

    let (status, _, body) = c.get("/status/204").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());

    for bad in [
        "/status/42",
        "/status/600",
        "/status/abc",
        "/delay/x",
        "/bytes/-1",
    ] {
        let (status, _, _) = c.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let start = Instant::now();
    let (status, _, body) = c.get("/delay/50").await;
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"e1");

    let (status, headers, body) = c.get("/no/such/path").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-backend"], "e1");
    assert_eq!(json(&body), serde_json::json!({"error": "not found"}));

    let (status, headers, _) = c.get("/ws").await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(headers["x-backend"], "e1");
}

#[tokio::test]
async fn websocket_greets_with_name_then_echoes() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let tcp = TcpStream::connect(echo.addr).await.expect("connect");
    let url = format!("ws://127.0.0.1:{}/ws", echo.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.headers()["x-backend"], "e1");

    let first = ws.next().await.expect("first message").expect("ws read");
    assert_eq!(first, Message::text("e1"));

    ws.send(Message::text("hello")).await.expect("send text");
    let got = ws.next().await.expect("echo").expect("ws read");
    assert_eq!(got, Message::text("hello"));

    let bin = Message::binary(vec![0u8, 1, 2, 255]);
    ws.send(bin.clone()).await.expect("send binary");
    assert_eq!(ws.next().await.expect("echo").expect("ws read"), bin);

    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .expect("send ping");
    let pong = ws.next().await.expect("pong").expect("ws read");
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"p")));

    ws.close(None).await.expect("close");
    while let Some(Ok(msg)) = ws.next().await {
        assert!(msg.is_close(), "unexpected {msg:?}");
    }
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let echo = Echo::start(&["--port", "0", "--name", "e1"], &[]);
    let tcp = TcpStream::connect(echo.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let uri = format!("http://127.0.0.1:{}/echo?h2=1", echo.port());
    let req = Request::get(uri).body(empty()).expect("request");
    let resp = sender.send_request(req).await.expect("send request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-backend"], "e1");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["path"], "/echo?h2=1");
}

#[tokio::test]
async fn port_env_default_name_and_sigterm() {
    let mut echo = Echo::start(&[], &[("PORT", "0")]);
    let mut c = Client::connect(echo.port()).await;
    let (status, headers, body) = c.get("/").await;
    let name = format!("echo-{}", echo.port());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, name.as_bytes());
    assert_eq!(headers["x-backend"], name.as_str());

    // An in-flight request finishes during the graceful shutdown.
    let req = c
        .request("GET", "/delay/200")
        .body(empty())
        .expect("request");
    let inflight = tokio::spawn(async move { c.send(req).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid = libc::pid_t::try_from(echo.child.id()).expect("pid");
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (status, _, body) = inflight.await.expect("in-flight task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, name.as_bytes());
    let exit = echo.wait_timeout(Duration::from_secs(5));
    assert!(exit.expect("exited after SIGTERM").success());
    assert!(TcpStream::connect(echo.addr).await.is_err());
}
