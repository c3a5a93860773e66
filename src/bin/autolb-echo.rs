//! `autolb-echo`: the tiny, fast demo/test/benchmark backend instance (second binary).
//!
//! HTTP/1.1 keep-alive and HTTP/2 prior knowledge. Endpoints: `/` (name), `/health`,
//! `/echo`, `/delay/{ms}`, `/status/{code}`, `/bytes/{n}`, `/ws`; anything else is a
//! JSON 404. Every answer carries `x-backend: NAME`. Nothing is logged per request.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
const CHUNK: usize = 64 * 1024;
const MAX_DELAY_MS: u64 = 10 * 60 * 1000;
const MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
const DRAIN: Duration = Duration::from_secs(5);
const NOT_FOUND: &str = r#"{"error":"not found"}"#;
const BAD_REQUEST: &str = r#"{"error":"bad request"}"#;
const UPGRADE_REQUIRED: &str = r#"{"error":"upgrade required"}"#;
const TEXT: &str = "text/plain";
const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// Payload of `/bytes/{n}`: byte `k` of the stream is `k % 256` (chunks start at multiples of 256).
static PATTERN: [u8; CHUNK] = pattern();

const fn pattern() -> [u8; CHUNK] {
    let mut a = [0u8; CHUNK];
    let mut i = 0;
    while i < CHUNK {
        a[i] = i as u8;
        i += 1;
    }
    a
}

/// Process-wide state, leaked once at startup so handlers share it for free.
struct App {
    name: &'static str,
    backend: HeaderValue,
    health: Bytes,
    shutdown: watch::Sender<bool>,
    active: AtomicUsize,
}

/// Counts a live connection or WebSocket session; the drain waits for zero.
struct Active(&'static App);

impl Active {
    fn new(app: &'static App) -> Self {
        app.active.fetch_add(1, Ordering::AcqRel);
        Active(app)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Response body: one buffer (empty = no body), or `n` pattern bytes streamed from [`PATTERN`].
enum Out {
    Full(Bytes),
    Pattern(u64),
}

impl<T: Into<Bytes>> From<T> for Out {
    fn from(b: T) -> Self {
        Out::Full(b.into())
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            Out::Full(b) if b.is_empty() => None,
            Out::Full(b) => Some(Ok(Frame::data(std::mem::take(b)))),
            Out::Pattern(0) => None,
            Out::Pattern(left) => {
                let n = (*left).min(CHUNK as u64) as usize;
                *left -= n as u64;
                Some(Ok(Frame::data(Bytes::from_static(&PATTERN[..n]))))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Out::Full(b) => b.is_empty(),
            Out::Pattern(left) => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Full(b) => SizeHint::with_exact(b.len() as u64),
            Out::Pattern(left) => SizeHint::with_exact(*left),
        }
    }
}

fn respond(app: &App, status: StatusCode, ct: &'static str, body: impl Into<Out>) -> Response<Out> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(X_BACKEND, app.backend.clone());
    if !ct.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn bad_request(app: &App) -> Response<Out> {
    respond(app, StatusCode::BAD_REQUEST, JSON, BAD_REQUEST)
}

async fn handle(app: &'static App, req: Request<Incoming>) -> Result<Response<Out>, Infallible> {
    let name = || Bytes::from_static(app.name.as_bytes());
    let path = req.uri().path();
    let resp = match path {
        "/" => respond(app, StatusCode::OK, TEXT, name()),
        "/health" => respond(app, StatusCode::OK, JSON, app.health.clone()),
        "/echo" => echo(app, req).await,
        "/ws" => websocket(app, req),
        _ => match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some(("delay", ms)) => match ms.parse::<u64>() {
                Ok(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
                    respond(app, StatusCode::OK, TEXT, name())
                }
                Err(_) => bad_request(app),
            },
            Some(("status", code)) => status(app, code),
            Some(("bytes", n)) => match n.parse::<u64>() {
                Ok(n) => respond(app, StatusCode::OK, OCTETS, Out::Pattern(n.min(MAX_BYTES))),
                Err(_) => bad_request(app),
            },
            _ => respond(app, StatusCode::NOT_FOUND, JSON, NOT_FOUND),
        },
    };
    Ok(resp)
}

/// `/status/{code}`: 200..=599 (a 1xx cannot be a final response, so it is a 400 too).
fn status(app: &App, code: &str) -> Response<Out> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    match status {
        None => bad_request(app),
        Some(s @ (StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)) => {
            respond(app, s, "", Bytes::new())
        }
        Some(s) => respond(app, s, TEXT, format!("status {}", s.as_u16())),
    }
}

/// `/echo`: describes the request; the body is counted frame by frame, never buffered.
async fn echo(app: &App, req: Request<Incoming>) -> Response<Out> {
    let (parts, mut body) = req.into_parts();
    let mut length: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return bad_request(app);
        };
        length += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let mut headers = serde_json::Map::new();
    for key in parts.headers.keys() {
        let all = parts.headers.get_all(key).iter();
        let mut values: Vec<serde_json::Value> = all
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
            .collect();
        let value = match values.len() {
            1 => values.swap_remove(0),
            _ => values.into(),
        };
        headers.insert(key.as_str().to_owned(), value);
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let doc = serde_json::json!({
        "name": app.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_length": length,
    });
    match serde_json::to_vec(&doc) {
        Ok(v) => respond(app, StatusCode::OK, JSON, v),
        Err(_) => bad_request(app),
    }
}

fn has_token(req: &Request<Incoming>, name: HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `/ws`: answers the upgrade and hands the upgraded stream to [`ws_session`].
fn websocket(app: &'static App, mut req: Request<Incoming>) -> Response<Out> {
    if req.version() != Version::HTTP_11 || !has_token(&req, header::UPGRADE, "websocket") {
        let mut r = respond(app, StatusCode::UPGRADE_REQUIRED, JSON, UPGRADE_REQUIRED);
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if k.len() == 24 => k,
        _ => return bad_request(app),
    };
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok || !has_token(&req, header::CONNECTION, "upgrade") {
        return bad_request(app);
    }
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return bad_request(app);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let guard = Active::new(app);
    tokio::spawn(async move {
        let _guard = guard;
        if let Ok(upgraded) = upgrade.await {
            ws_session(app, TokioIo::new(upgraded)).await;
        }
    });
    let mut r = respond(app, StatusCode::SWITCHING_PROTOCOLS, "", Bytes::new());
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// Sends the name first, then echoes Text/Binary; tungstenite answers pings and closes.
async fn ws_session(app: &'static App, io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut shutdown = app.shutdown.subscribe();
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let hello = Message::text(Utf8Bytes::from_static(app.name));
    if ws.send(hello).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

/// HTTP/2 prior knowledge starts with `PRI * HTTP/2.0`; HTTP/1 never uses method `PRI`.
async fn is_h2(stream: &TcpStream) -> io::Result<bool> {
    const PRI: &[u8; 3] = b"PRI";
    let mut buf = [0u8; 3];
    for _ in 0..100 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != PRI[..n] {
            return Ok(false);
        }
        if n == PRI.len() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(false)
}

/// Drives a hyper connection; on shutdown asks it to finish in-flight requests and close.
macro_rules! drive {
    ($conn:expr, $shutdown:ident) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = $shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }};
}

async fn serve(
    app: &'static App,
    stream: TcpStream,
    mut shutdown: watch::Receiver<bool>,
    _guard: Active,
) {
    let h2 = tokio::select! {
        r = is_h2(&stream) => match r {
            Ok(h2) => h2,
            Err(_) => return,
        },
        _ = shutdown.changed() => return,
    };
    let svc = service_fn(move |req| handle(app, req));
    let io = TokioIo::new(stream);
    if h2 {
        drive!(
            http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc),
            shutdown
        );
    } else {
        drive!(
            http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades(),
            shutdown
        );
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

/// The demo, test and benchmark backend of autolb: an HTTP/1.1 and HTTP/2 (prior
/// knowledge) server answering /, /health, /echo, /delay/MS, /status/CODE, /bytes/N
/// and /ws, every answer with x-backend: NAME.
#[derive(clap::Parser)]
#[command(
    name = "autolb-echo",
    version = autolb::build::LONG_VERSION,
    after_help = "Examples:\n  autolb-echo --port 3001 --name app1\n  PORT=3001 autolb-echo --host 0.0.0.0"
)]
struct Args {
    /// Port to listen on (0: any free port, printed on stdout)
    #[arg(long, env = "PORT", value_name = "N")]
    port: u16,
    /// Instance name, sent in x-backend (default echo-PORT)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Address to bind
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Runtime worker threads
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("bad --host {:?}", args.host))?;
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let name = args
        .name
        .unwrap_or_else(|| format!("echo-{}", local.port()));
    let backend = HeaderValue::from_str(&name).with_context(|| format!("bad --name {name:?}"))?;
    let health = serde_json::to_vec(&serde_json::json!({"status": "ok", "name": name}))?;
    let app: &'static App = Box::leak(Box::new(App {
        name: Box::leak(name.into_boxed_str()),
        backend,
        health: Bytes::from(health),
        shutdown: watch::Sender::new(false),
        active: AtomicUsize::new(0),
    }));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    drop(out);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = Active::new(app);
                    tokio::spawn(serve(app, stream, app.shutdown.subscribe(), guard));
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    app.shutdown.send_replace(true);
    let deadline = Instant::now() + DRAIN;
    while app.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match <Args as clap::Parser>::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and --version may meet a closed stdout: nothing to do about it.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autolb-echo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
