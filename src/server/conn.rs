//! One client connection: the TLS handshake on https listeners, then HTTP/1.1 (keep-alive,
//! upgrades) or HTTP/2 (chosen by ALPN, or by the client's preface on `h2c: true` http
//! listeners) on hyper, served until the client leaves, the idle timeout passes, or a
//! graceful shutdown asks it to finish its requests.

mod boxed;
pub(super) mod front;
mod gated;
pub(super) mod idle;
mod lot;
mod park;
mod setup;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

use super::framed::{Framed, Socket};
use super::lazy_tcp::LazyTcp;
use super::listener::ConnectionGuard;
use super::Drain;
use crate::proxy::ConnContext;
use crate::tls::TlsListener;
use front::Front;
use idle::{Activity, Tracked};
pub(crate) use setup::setup;

/// The longest a client may take to complete its TLS handshake (or the listener's
/// `idle_timeout`, if shorter).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 limits. Streams a client may have open at once (nginx uses 128, HAProxy 100);
/// more are refused with REFUSED_STREAM and retried by clients.
const H2_MAX_STREAMS: u32 = 128;
/// Decoded size of a request's header list (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Rapid reset (CVE-2023-44487): streams reset by the client before we accepted them; more
/// than this pending at once is answered with GOAWAY (the h2 default, made explicit).
const H2_MAX_PENDING_RESETS: usize = 20;
/// MadeYouReset (CVE-2025-8671): streams *we* reset because the client misbehaved; past this
/// many on one connection, GOAWAY (hyper's default, made explicit).
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// Pings to notice dead clients on quiet connections.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 server settings, for hyper's and hyper-util's (auto) builders alike.
macro_rules! h2_settings {
    ($builder:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            // RFC 8441: WebSockets over HTTP/2 (extended CONNECT, `:protocol websocket`).
            .enable_connect_protocol()
    };
}

/// The listener's `limits:` on an HTTP/1 builder (hyper answers 431 past the head size or
/// header count). The wait for a request head is bounded by `Framed` (`HeadWait`), not by
/// hyper's per-request timer. hyper keeps headers on the stack unless `max_headers` changes
/// from its 100.
macro_rules! h1_limits {
    ($builder:expr, $limits:expr) => {{
        #[allow(unused_mut)]
        let mut b = $builder;
        // `half_close`: hyper then does not read the client's socket while a request is
        // answered (to notice an early EOF), a read that makes it allocate a new read buffer
        // for every request because the request's head still shares the old one. As with
        // HAProxy's default (no `abortonclose`), a request whose client left is answered to
        // the closed socket, which fails the write and ends the connection.
        // No timer: hyper's HTTP/1 server uses one only for `header_read_timeout` (an
        // `Arc` per connection otherwise).
        b.header_read_timeout(None)
            .half_close(true)
            .max_buf_size(super::h1_gate::hyper_head_limit($limits.max_header_bytes));
        if $limits.max_headers != 100 {
            b.max_headers($limits.max_headers);
        }
    }};
}

/// A service counting its requests (until their bodies end) in `activity`. Once the
/// connection drains, an HTTP/1 response says `Connection: close` (hyper then closes the
/// connection after it): a drain never closes a keep-alive connection on which the client
/// may be sending its next request.
macro_rules! tracked_service {
    ($ctx:expr, $front:expr, $activity:expr) => {{
        let (ctx, front, activity) = ($ctx, $front, $activity);
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let active = activity.begin();
            let h1 = req.version() < http::Version::HTTP_2;
            if !h1 {
                activity.saw_h2();
            }
            let (ctx, front) = (ctx.clone(), front.clone());
            async move {
                let req = req.map(crate::upstream::downstream::Downstream::Hyper);
                let mut resp = front::respond(req, ctx, front).await;
                if h1 && active.draining() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, active, h1)))
            }
        })
    }};
}

/// What every protocol's serving loop needs.
struct Serving {
    ctx: Arc<ConnContext>,
    front: Option<Arc<Front>>,
    idle: Duration,
    peer: SocketAddr,
    shutdown: watch::Receiver<Drain>,
    /// Requests in flight on the connection (HTTP/1: what `HeadWait` asks).
    activity: Arc<Activity>,
}

/// What counts a connection as open (the listener's gauge, its admission): held until it
/// ends, parked or not.
pub(crate) struct Held {
    pub _gauge: ConnectionGuard,
    pub _admitted: super::admission::Admitted,
}

/// Serve one accepted connection of the listener `listener_name` (bound to `port`); `tls`
/// for https ones.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    mut stream: LazyTcp,
    peer: SocketAddr,
    port: u16,
    services: super::Services,
    listener_name: Arc<str>,
    shutdown: watch::Receiver<Drain>,
    held: Held,
    tls: Option<Arc<TlsListener>>,
) {
    let _ = stream.set_nodelay(true);
    // `accept_proxy: true`: the PROXY header names the client (XFF, logs, hashing).
    // Boxed, as the waits below: the connection's task keeps room for the largest future
    // it awaits, for as long as the connection lives (idle ones included).
    let accepted =
        match super::client_addrs::accept_at_once(&services.runtime, &listener_name, &stream, peer)
        {
            Some(accepted) => Some(accepted),
            None => {
                Box::pin(super::client_addrs::accept(
                    &services.runtime,
                    &listener_name,
                    &mut stream,
                    peer,
                ))
                .await
            }
        };
    let Some(accepted) = accepted else {
        return;
    };
    let peer = accepted.addrs.src;
    // `port`, the one the client reached: where `http3: true` serves QUIC too (Alt-Svc).
    let addrs = accepted.tag_requests.then_some(accepted.addrs);
    let Some(setup) = setup(services, &listener_name, peer, tls.is_some(), addrs, port) else {
        return;
    };
    let limits = setup.ctx.limits.clone();
    let idle = setup.idle;
    let h2c = setup.h2c;
    let serving = Serving {
        ctx: setup.ctx,
        front: setup.front,
        idle,
        peer,
        shutdown: shutdown.clone(),
        activity: Activity::new(),
    };
    let head_wait = || {
        let timeout = limits.header_timeout.map_or(idle, |t| t.min(idle));
        super::framed::HeadWait::new(serving.activity.clone(), timeout)
    };
    let Some(tls) = tls else {
        let ctx = serving.ctx.clone();
        let io = Framed::new(stream, &limits, head_wait(), ctx);
        // Boxed, like the TLS path: the task of a plain HTTP/1.1 connection (the common
        // one, spawned for every accepted connection) holds only its own state.
        if h2c {
            return Box::pin(serve_auto(TokioIo::new(io), serving)).await;
        }
        let mut drain = None;
        // Parked: what it keeps waits in the worker's parking lot, and this task ends.
        if let Some((io, serving)) = Box::pin(serve_h1(io, serving, &mut drain, true)).await {
            let ctx = serving.ctx.park();
            if let Some(parked) = park::Parked::new(io, serving, ctx, drain, held) {
                parked.park();
            }
        }
        return;
    };
    let wait = head_wait();
    Box::pin(serve_tls(stream, tls, serving, limits, wait)).await
}

/// An https connection: the TLS handshake, then HTTP/2 (ALPN h2) or HTTP/1.1.
async fn serve_tls(
    stream: LazyTcp,
    tls: Arc<TlsListener>,
    serving: Serving,
    limits: Arc<crate::config::Limits>,
    head_wait: super::framed::HeadWait,
) {
    // A handshake takes round trips: registered from the start.
    let stream = match stream.into_tokio() {
        Ok(stream) => stream,
        Err(e) => return tracing::debug!(client = %serving.peer, error = %e, "cannot serve"),
    };
    // Not cut short by a drain: the client connected before it and gets its answer.
    let Ok(accepted) = tls
        .accept(stream, HANDSHAKE_TIMEOUT.min(serving.idle))
        .await
    else {
        return;
    };
    let version = match accepted.stream.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLSv1.3",
    };
    let _ = serving.ctx.tls.set(version);
    if let Some(identity) = accepted.client {
        let _ = serving.ctx.client_cert.set(identity);
    }
    if accepted.h2 {
        serve_h2(TokioIo::new(accepted.stream), serving).await
    } else {
        let io = Framed::new(accepted.stream, &limits, head_wait, serving.ctx.clone());
        let _ = Box::pin(serve_h1(io, serving, &mut None, false)).await;
    }
}

fn ended<E: std::fmt::Display>(peer: SocketAddr, result: Result<(), E>) {
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended");
    }
}

/// HTTP/1.1 with keep-alive and upgrades; `idle` bounds the wait for a request head.
///
/// From the start of a drain every response says `Connection: close`. A drain for a
/// successor (`Drain::Handover`) never closes the connection while it is idle: the client
/// may be sending its next request at that very moment (HTTP/1.1 cannot refuse it), and a
/// request lost so fails without a retry if it is not idempotent. The connection is
/// answered once more and closed, or closes at its usual idle (`header_timeout`) deadline,
/// which clients that pool connections already expect, or when `shutdown_grace` ends. A
/// stop (`Drain::Stop`) closes it after a short wait for a request instead.
///
/// A connection idle for `framed::PARK_AFTER` is parked: hyper's connection (and its
/// buffers) is dropped and the socket waited on with no buffer until the client sends
/// again, its idle deadline passes, or a drain closes it as above. With `hand_back` (plain
/// connections), the parked connection is returned instead, to wait outside this task
/// (`park`); `drain` notes a drain that began.
async fn serve_h1<T>(
    io: Framed<T>,
    s: Serving,
    drain: &mut Option<Drain>,
    hand_back: bool,
) -> Option<(Framed<T>, Serving)>
where
    T: Socket + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        ctx,
        front,
        idle,
        peer,
        mut shutdown,
        activity,
    } = s;
    let limits = ctx.limits.clone();
    // Boxed once: it moves into hyper's connection and back out at every park.
    let mut io = Box::new(io);
    io.allow_parking();
    let mut io = TokioIo::new(io);
    if drain.is_some() {
        activity.drain();
    }
    loop {
        let service = tracked_service!(ctx.clone(), front.clone(), activity.clone());
        // Boxed: a parked connection's task does not keep room for hyper's connection.
        let mut conn = {
            let mut builder = http1::Builder::new();
            h1_limits!(&mut builder, limits);
            Box::new(
                builder
                    .keep_alive(true)
                    .serve_connection(io, service)
                    .with_upgrades(),
            )
        };
        let result = Box::pin(serve_burst(&mut conn, &mut shutdown, &activity, drain)).await;
        // Upgraded (the tunnel has the socket), or ended for good.
        let Some(parts) = conn.into_parts() else {
            ended(peer, result);
            return None;
        };
        if result.is_err() || !parts.io.inner().parked() {
            ended(peer, result);
            return None;
        }
        let http1::Parts {
            io: parked_io,
            read_buf,
            service,
            ..
        } = parts;
        io = parked_io;
        io.inner_mut().unpark(&read_buf);
        let unread = !read_buf.is_empty();
        // hyper's read buffer (8 KiB) goes with it.
        drop((read_buf, service));
        if unread {
            // The client's next bytes are here already: serve them at once.
            continue;
        }
        if hand_back {
            let serving = Serving {
                ctx,
                front,
                idle,
                peer,
                shutdown,
                activity,
            };
            return Some((*io.into_inner(), serving));
        }
        let (framed, deadline) = (io.inner(), io.inner().head_deadline());
        // Never registered (nothing found unreadable yet): read again at once.
        let tcp = framed.get_ref().tcp();
        if let Some(tcp) = tcp {
            if !Box::pin(park::wait(tcp, deadline, &mut shutdown, drain)).await {
                return None;
            }
        }
        if drain.is_some() {
            activity.drain();
        }
    }
}

/// Serve requests until hyper's connection ends (the client closed, an error, an upgrade,
/// `Connection: close`, or the connection parked), minding a drain (see `serve_h1`).
async fn serve_burst<C>(
    conn: &mut C,
    shutdown: &mut watch::Receiver<Drain>,
    activity: &Activity,
    drain: &mut Option<Drain>,
) -> hyper::Result<()>
where
    C: std::future::Future<Output = hyper::Result<()>> + GracefulShutdown + Unpin,
{
    if drain.is_none() {
        {
            let stop = gated::gated(shutdown.changed());
            tokio::pin!(stop);
            tokio::select! {
                result = &mut *conn => return result,
                _ = stop => {}
            }
        }
        activity.drain();
        *drain = Some(*shutdown.borrow());
    }
    if *drain == Some(Drain::Handover) {
        return conn.await;
    }
    // A connection accepted just before the stop may not have sent its first request yet:
    // give it a moment, so that it is answered rather than closed unanswered.
    match tokio::time::timeout(STOP_REQUEST_GRACE, &mut *conn).await {
        Ok(result) => result,
        Err(_) => {
            conn.shut_down();
            conn.await
        }
    }
}

/// hyper's graceful shutdown of an HTTP/1 connection.
trait GracefulShutdown {
    fn shut_down(&mut self);
}

impl<I, S> GracefulShutdown for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    I: Read + Write + Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(&mut self) {
        std::pin::Pin::new(self).graceful_shutdown();
    }
}

impl<C: GracefulShutdown> GracefulShutdown for Box<C> {
    fn shut_down(&mut self) {
        (**self).shut_down();
    }
}

/// How long an idle HTTP/1 connection may still send a request once a stop began.
const STOP_REQUEST_GRACE: Duration = Duration::from_millis(250);

/// HTTP/2 (after ALPN h2): closed gracefully (GOAWAY) after `idle` without requests.
async fn serve_h2<I>(io: I, s: Serving)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let Serving {
        ctx,
        front,
        idle,
        peer,
        mut shutdown,
        activity,
    } = s;
    let service = boxed::Boxed(tracked_service!(ctx, front, activity.clone()));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    h2_settings!(builder);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    if until_stop(conn.as_mut(), &activity, idle, &mut shutdown, peer).await {
        conn.as_mut().graceful_shutdown();
        ended(peer, conn.await);
    }
}

/// Serve `conn` until it ends, or stays idle for `idle` (then closed gracefully: GOAWAY on
/// HTTP/2), or a stop begins: `true` then, with the connection open for the caller to close.
async fn until_stop<C>(
    mut conn: std::pin::Pin<&mut C>,
    activity: &Activity,
    idle: Duration,
    shutdown: &mut watch::Receiver<Drain>,
    peer: SocketAddr,
) -> bool
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::select! {
        () = until_idle(conn.as_mut(), activity, idle, peer) => false,
        _ = shutdown.changed() => true,
    }
}

/// Serve `conn` until it ends, or stays idle for `idle` (then closed gracefully).
async fn until_idle<C>(
    mut conn: std::pin::Pin<&mut C>,
    activity: &Activity,
    idle: Duration,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::select! {
        result = conn.as_mut() => ended(peer, result),
        _ = activity.idle(idle) => {
            conn.as_mut().graceful_shutdown();
            ended(peer, conn.await);
        }
    }
}

/// `h2c: true`: HTTP/2 with prior knowledge when the client starts with the h2 preface,
/// HTTP/1.1 (with upgrades) otherwise.
async fn serve_auto<I>(io: I, s: Serving)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let Serving {
        ctx,
        front,
        idle,
        peer,
        mut shutdown,
        activity,
    } = s;
    let limits = ctx.limits.clone();
    // Mostly HTTP/2 (a task per stream): boxed, HTTP/1 requests too.
    let service = boxed::Boxed(tracked_service!(ctx, front, activity.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    h1_limits!(builder.http1(), limits);
    h2_settings!(builder.http2());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    if !until_stop(conn.as_mut(), &activity, idle, &mut shutdown, peer).await {
        return;
    }
    // Draining: HTTP/2 says GOAWAY (the client retries what the server did not take); an
    // HTTP/1 connection drains as in `serve_h1` (closed at its idle deadline when a
    // successor took over).
    activity.drain();
    if activity.is_h2() || *shutdown.borrow() != Drain::Handover {
        conn.as_mut().graceful_shutdown();
        return ended(peer, conn.await);
    }
    until_idle(conn, &activity, idle, peer).await;
}
