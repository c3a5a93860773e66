//! gRPC test harness: a tonic server of a small hand-written service `test.Echo` (prost
//! messages, no protoc), its tonic client calls, a raw HTTP/2 client for what a gRPC client
//! hides (the HTTP status, the exact headers), and Python grpcio (gRPC's C core) programs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// The one message of `test.Echo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    /// How long the server waits before answering (ms).
    #[prost(uint64, tag = "2")]
    pub delay_ms: u64,
    /// Server streaming: how many answers.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

pub fn msg(text: &str) -> Msg {
    Msg {
        text: text.into(),
        ..Msg::default()
    }
}

type Codec = tonic_prost::ProstCodec<Msg, Msg>;

fn codec() -> Codec {
    tonic_prost::ProstCodec::default()
}

/// A tower service of one method: tonic's `*Service` traits have blanket impls for them.
struct Handler<R, O> {
    name: &'static str,
    f: fn(&'static str, Request<R>) -> BoxFuture<Response<O>, Status>,
}

impl<R, O> Service<Request<R>> for Handler<R, O> {
    type Response = Response<O>;
    type Error = Status;
    type Future = BoxFuture<Response<O>, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<R>) -> Self::Future {
        (self.f)(self.name, req)
    }
}

/// The server side of `test.Echo`:
/// - `Unary`: `echo:TEXT` after `delay_ms`, with the `te` it was sent with in header
///   metadata `x-te` and its `x-client` metadata back in `x-client-echo`; text `fail`
///   fails with NOT_FOUND, message `no such thing` and trailing metadata `x-why: test`;
///   a server named `down` answers every call UNAVAILABLE (`going away`).
/// - `Stream` (server streaming): `count` answers `TEXT-i`, `delay_ms` apart, then an
///   OK end, or (text `fail`) ABORTED with trailing metadata `x-why: late`.
/// - `Collect` (client streaming): the texts received, joined with `+`.
/// - `Chat` (bidi): each message answered at once with `re:TEXT`; `x-server` in its
///   header metadata.
#[derive(Clone)]
pub struct EchoServer {
    pub name: &'static str,
    /// Calls received.
    pub calls: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let name = self.name;
        let mut grpc = tonic::server::Grpc::new(codec());
        match req.uri().path() {
            "/test.Echo/Unary" => Box::pin(async move {
                let f = |name, r| -> BoxFuture<_, _> { Box::pin(unary(name, r)) };
                Ok(grpc.unary(Handler { name, f }, req).await)
            }),
            "/test.Echo/Stream" => Box::pin(async move {
                let f = |_, r| -> BoxFuture<_, _> { Box::pin(server_stream(r)) };
                Ok(grpc.server_streaming(Handler { name, f }, req).await)
            }),
            "/test.Echo/Collect" => Box::pin(async move {
                let f = |_, r| -> BoxFuture<_, _> { Box::pin(collect(r)) };
                Ok(grpc.client_streaming(Handler { name, f }, req).await)
            }),
            "/test.Echo/Chat" => Box::pin(async move {
                let f = |name, r| -> BoxFuture<_, _> { Box::pin(chat(name, r)) };
                Ok(grpc.streaming(Handler { name, f }, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

async fn chat(
    name: &'static str,
    r: Request<Streaming<Msg>>,
) -> Result<Response<BoxStream<Msg>>, Status> {
    let out = r.into_inner().map(|m| {
        m.map(|m| Msg {
            text: format!("re:{}", m.text),
            ..Msg::default()
        })
    });
    let mut resp = Response::new(Box::pin(out) as BoxStream<Msg>);
    resp.metadata_mut()
        .insert("x-server", MetadataValue::from_static(name));
    Ok(resp)
}

async fn unary(name: &'static str, r: Request<Msg>) -> Result<Response<Msg>, Status> {
    let te = r.metadata().get("te").cloned();
    let client = r.metadata().get("x-client").cloned();
    let m = r.into_inner();
    tokio::time::sleep(Duration::from_millis(m.delay_ms)).await;
    if name == "down" {
        return Err(Status::unavailable("going away"));
    }
    if m.text == "fail" {
        let mut s = Status::not_found("no such thing");
        s.metadata_mut()
            .insert("x-why", MetadataValue::from_static("test"));
        return Err(s);
    }
    let mut resp = Response::new(Msg {
        text: format!("echo:{}", m.text),
        ..Msg::default()
    });
    resp.metadata_mut()
        .insert("x-server", MetadataValue::from_static(name));
    if let Some(te) = te {
        resp.metadata_mut().insert("x-te", te);
    }
    if let Some(c) = client {
        resp.metadata_mut().insert("x-client-echo", c);
    }
    Ok(resp)
}

async fn server_stream(r: Request<Msg>) -> Result<Response<BoxStream<Msg>>, Status> {
    let m = r.into_inner();
    let delay = Duration::from_millis(m.delay_ms);
    let fail = m.text == "fail";
    let text = m.text.clone();
    let items = tokio_stream::iter(0..m.count).then(move |i| {
        let text = text.clone();
        async move {
            tokio::time::sleep(delay).await;
            Ok(Msg {
                text: format!("{text}-{i}"),
                ..Msg::default()
            })
        }
    });
    let end = tokio_stream::iter(fail.then(|| {
        let mut s = Status::aborted("stopped late");
        s.metadata_mut()
            .insert("x-why", MetadataValue::from_static("late"));
        Err(s)
    }));
    Ok(Response::new(Box::pin(items.chain(end)) as BoxStream<Msg>))
}

async fn collect(r: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
    let mut stream = r.into_inner();
    let mut texts = Vec::new();
    while let Some(m) = stream.message().await? {
        texts.push(m.text);
    }
    Ok(Response::new(Msg {
        text: texts.join("+"),
        ..Msg::default()
    }))
}

/// A running tonic server of `test.Echo` (and the standard health service).
pub struct Server {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a `test.Echo` server (h2c) on a free port; it says `name` in `x-server`.
pub async fn server(name: &'static str) -> Server {
    server_with(name, None).await
}

/// Start a `test.Echo` server on a free port, over TLS with `identity` (certificate chain
/// and key, PEM) when given.
pub async fn server_with(name: &'static str, identity: Option<(&str, &str)>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    serve(listener, name, identity)
}

/// Serve `test.Echo` (and health) on `listener` (what `examples/grpc_echo.rs` runs).
pub fn serve(
    listener: tokio::net::TcpListener,
    name: &'static str,
    identity: Option<(&str, &str)>,
) -> Server {
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = identity {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        builder = builder.tls_config(tls).expect("server TLS config");
    }
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let echo = EchoServer {
        name,
        calls: calls.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = builder
            .add_service(echo)
            .add_service(health_service)
            .serve_with_incoming(incoming)
            .await;
    });
    Server {
        addr,
        calls,
        health,
        task,
    }
}

/// Connections a server accepted, and how many of them are still open.
#[derive(Debug, Default)]
pub struct ConnCount {
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
}

/// An accepted connection, counted while open.
struct Counted {
    io: tokio::net::TcpStream,
    count: Arc<ConnCount>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

/// Start a `test.Echo` server (h2c) on a free port that allows `max_streams` concurrent
/// streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS) and counts the
/// connections it accepts.
pub async fn server_limited(name: &'static str, max_streams: u32) -> (Server, Arc<ConnCount>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(ConnCount::default());
    let echo = EchoServer {
        name,
        calls: calls.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let counting = count.clone();
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |s| {
            s.map(|io| {
                counting.accepted.fetch_add(1, Ordering::SeqCst);
                counting.open.fetch_add(1, Ordering::SeqCst);
                Counted {
                    io,
                    count: counting.clone(),
                }
            })
        });
        let _ = tonic::transport::Server::builder()
            .max_concurrent_streams(max_streams)
            .add_service(echo)
            .add_service(health_service)
            .serve_with_incoming(incoming)
            .await;
    });
    let server = Server {
        addr,
        calls,
        health,
        task,
    };
    (server, count)
}

/// A tonic client of `test.Echo` at `addr` (h2c).
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
    pub channel: Channel,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_to(format!("http://{addr}"), None).await
    }

    /// Over TLS to `https://NAME:PORT/`, trusting `ca_pem` (ALPN h2).
    pub async fn connect_tls(addr: SocketAddr, name: &str, ca_pem: &str) -> Client {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name(name);
        Client::connect_to(format!("https://{addr}"), Some(tls)).await
    }

    async fn connect_to(uri: String, tls: Option<tonic::transport::ClientTlsConfig>) -> Client {
        let mut endpoint = Channel::from_shared(uri)
            .expect("uri")
            .connect_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).expect("client TLS config");
        }
        let channel = endpoint.connect().await.expect("gRPC channel to autolb");
        Client {
            grpc: tonic::client::Grpc::new(channel.clone()),
            channel,
        }
    }

    pub async fn unary(&mut self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/test.Echo/Unary");
        self.grpc.unary(req, path, codec()).await
    }

    pub async fn stream(&mut self, req: Request<Msg>) -> Result<Response<Streaming<Msg>>, Status> {
        self.grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/test.Echo/Stream");
        self.grpc.server_streaming(req, path, codec()).await
    }

    pub async fn collect<S>(&mut self, req: Request<S>) -> Result<Response<Msg>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/test.Echo/Collect");
        self.grpc.client_streaming(req, path, codec()).await
    }

    pub async fn chat<S>(&mut self, req: Request<S>) -> Result<Response<Streaming<Msg>>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/test.Echo/Chat");
        self.grpc.streaming(req, path, codec()).await
    }
}

/// A gRPC message in its length-prefixed frame.
pub fn frame(m: &Msg) -> Bytes {
    let body = prost::Message::encode_to_vec(m);
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// The messages of a gRPC response body.
pub fn messages(mut body: Bytes) -> Vec<Msg> {
    let mut out = Vec::new();
    while body.remaining() >= 5 {
        let _flags = body.get_u8();
        let len = body.get_u32() as usize;
        let m = body.split_to(len);
        out.push(prost::Message::decode(m).expect("message"));
    }
    out
}

/// What a raw HTTP/2 call got: the HTTP status, headers, body and trailers.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl RawReply {
    /// `grpc-status` from the trailers, or the headers (Trailers-Only).
    pub fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    pub fn grpc_message(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .map(|v| v.to_str().expect("ascii").to_owned())
    }
}

/// One gRPC call over a fresh h2c connection with hyper (prior knowledge): `method` with
/// one message and extra headers.
pub async fn raw_call(
    addr: SocketAddr,
    method: &str,
    m: &Msg,
    headers: &[(&str, &str)],
) -> RawReply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(frame(m))).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), tx.send_request(req))
        .await
        .expect("an answer within 20 s")
        .expect("h2 response");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    RawReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Python grpcio (gRPC's C core): `.ci/run` installs it with pip; elsewhere the test skips,
/// saying so (a failure in CI).
pub fn grpcio_or_skip(test: &str) -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: Python grpcio missing in CI (.ci/run installs it with pip)");
        }
        eprintln!("SKIPPED {test}: no Python grpcio (pip install grpcio)");
    }
    found
}

/// The grpcio programs' directory.
pub fn python_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_support")
}
