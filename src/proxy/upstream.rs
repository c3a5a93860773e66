//! Connections to one backend: per-worker idle connections (a lock-free queue of hyper's,
//! a LIFO stack of the own client's, see `idle`), connect with a timeout
//! (TLS and HTTP/2 when the pool asks for them, see `connect`), and a request sent on a reused
//! connection that turns out closed is resent once on a fresh one (it was never written).
//! HTTP/1.1 connections carry one request at a time and are checked in after a complete
//! response; an HTTP/2 connection stays in the queue and is shared by concurrent requests.
//! Bodiless requests to plain HTTP/1.1 backends go through autolb's own client (`raw`).

mod connect;
mod h2_open;
mod idle;
mod raw;
mod raw_body;
mod sender;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use http::header::CONNECTION;
use http::request::Parts;
use http::Method;
use http_body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::body::{RequestBody, UpstreamIncoming};
use super::grpc::{within, Progress};
use super::interim::{Interim, Slot};
use crate::config::{self, UpstreamProtocol};
use crate::sched::worker_id;
use connect::Upstream;
pub use raw::{parse_response_head, RawConn, RawError};
pub use raw_body::{decode_chunked_body, RawBody, ResponseFraming};
use sender::Conn;
pub use sender::Sender;

/// Idle connections kept per worker and backend.
const MAX_IDLE_PER_WORKER: usize = 1024;

/// What one attempt may wait for and hold.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    /// Connecting to the backend.
    pub connect: Duration,
    /// The response head, from when the request was sent.
    pub response: Duration,
    /// How long an idle connection may have waited to be reused.
    pub max_idle: Duration,
    /// The client listener's `limits.response_buffer` (reads of at most half of it).
    pub response_buffer: usize,
}

/// Why a backend gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with {addr}: the backend chose ALPN protocol {got:?}, not the pool's protocol")]
    Alpn { addr: SocketAddr, got: String },
    #[error("handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Raw { addr: SocketAddr, source: RawError },
    #[error("no response from {addr} within {after:?}")]
    ResponseTimeout { addr: SocketAddr, after: Duration },
}

impl UpstreamError {
    /// A response timeout answers 504; everything else 502.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::ResponseTimeout { .. })
    }

    /// Nothing could reach the backend (refused, connect timeout, failed handshake).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Alpn { .. }
                | UpstreamError::Handshake { .. }
        )
    }
}

struct Idle<T> {
    tx: T,
    since: Instant,
}

/// Connections to one backend address, one idle queue per worker thread so that workers
/// never contend, and the connection settings (TLS, protocol) of the backend's pool.
pub struct ConnPool {
    addr: SocketAddr,
    /// Idle connections of hyper's clients, per worker; each store is made on its worker's
    /// first request here (a bounded queue of 1,024 slots is ~48 KiB: a backend nobody
    /// sends to should not cost that per worker).
    idle: Box<[OnceLock<ArrayQueue<Idle<Sender>>>]>,
    /// Idle connections of autolb's own HTTP/1.1 client, per worker.
    raw_idle: Box<[idle::IdleStack<RawConn>]>,
    upstream: ArcSwap<Upstream>,
    /// `protocol: h2`: who is opening a connection now (the others wait and share it).
    h2_opening: h2_open::H2Opening,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", &self.addr)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnPool {
    /// Plain HTTP/1.1 connections until `configure` says otherwise.
    pub fn new(addr: SocketAddr, workers: usize) -> ConnPool {
        ConnPool {
            addr,
            idle: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
            raw_idle: (0..workers.max(1))
                .map(|_| idle::IdleStack::new(MAX_IDLE_PER_WORKER))
                .collect(),
            upstream: ArcSwap::from_pointee(Upstream::plain()),
            h2_opening: Default::default(),
        }
    }

    /// Take the connection settings of the backend's pool (`protocol`, `tls`); `address` is
    /// the backend as configured (its host is the default TLS server name). Cheap when
    /// nothing changed; after a change, idle connections of the old settings are dropped
    /// instead of reused. Called whenever a snapshot is built.
    pub fn configure(&self, cfg: &config::Pool, address: &str) {
        let current = self.upstream.load_full();
        if let Some(next) = connect::reconfigure(&current, cfg, address, self.addr) {
            self.upstream.store(Arc::new(next));
        }
    }

    fn queue(&self) -> &ArrayQueue<Idle<Sender>> {
        self.idle[worker_id() % self.idle.len()]
            .get_or_init(|| ArrayQueue::new(MAX_IDLE_PER_WORKER))
    }

    fn raw_queue(&self) -> &idle::IdleStack<RawConn> {
        &self.raw_idle[worker_id() % self.raw_idle.len()]
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .filter_map(OnceLock::get)
            .map(ArrayQueue::len)
            .sum::<usize>()
            + self.raw_idle.iter().map(|q| q.len()).sum::<usize>()
    }

    /// An idle connection of the own client, younger than `max_idle`, of the current
    /// settings, and not closed by the backend meanwhile.
    fn take_raw(&self, max_idle: Duration, generation: u64) -> Option<RawConn> {
        self.raw_queue()
            .pop(max_idle, |c| c.generation == generation && !c.is_stale())
    }

    /// Return a connection of the own client whose last response was read completely.
    pub fn checkin_raw(&self, conn: RawConn) {
        if conn.generation != self.upstream.load().generation {
            return;
        }
        conn.park();
        self.raw_queue().push(conn);
    }

    /// An idle connection younger than `max_idle`, still open and of the current settings.
    /// HTTP/2 connections go back into the queue at once, shared.
    async fn take_idle(&self, max_idle: Duration, generation: u64) -> Option<Sender> {
        let queue = self.queue();
        // Bounded: each entry is looked at once at most.
        for _ in 0..queue.len() {
            let Some(Idle { mut tx, since }) = queue.pop() else {
                break;
            };
            if since.elapsed() >= max_idle || tx.is_closed() || tx.generation != generation {
                tracing::debug!(backend = %self.addr, closed = tx.is_closed(), "idle connection dropped");
                continue;
            }
            match tx.ready().await {
                Ok(()) => {
                    if let Some(shared) = tx.share() {
                        let _ = queue.push(Idle {
                            tx: shared,
                            since: Instant::now(),
                        });
                    }
                    return Some(tx);
                }
                Err(e) => {
                    tracing::debug!(backend = %self.addr, error = %e, "idle connection unusable")
                }
            }
        }
        None
    }

    /// Return a connection whose last response was read completely (HTTP/2 connections are
    /// shared from the queue already).
    pub fn checkin(&self, tx: Sender) {
        let up = self.upstream.load();
        if tx.is_closed() || tx.is_h2() || tx.generation != up.generation || up.send_proxy.is_some()
        {
            return;
        }
        let _ = self.queue().push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    /// A new connection to `addr` (the backend's, or a health check's port).
    /// `client`: the addresses of the PROXY header (`send_proxy`; `None`: LOCAL/UNKNOWN).
    async fn open(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        client: Option<crate::l4::ProxyAddrs>,
    ) -> Result<Sender, UpstreamError> {
        let up = self.upstream.load_full();
        // Boxed: a handshake (TCP, PROXY header, TLS, HTTP/2) is an 8 KB future, needed once
        // per connection; inline it would be copied with every request's future.
        let conn = Box::pin(connect::connect(&up, addr, timeout, client)).await?;
        Ok(Sender {
            conn,
            generation: up.generation,
        })
    }

    /// Send `req` and wait up to `limits.response` for the response head. Returns the
    /// response, the hyper connection to check in once the response body is complete (the
    /// own client's connection comes back with its body), and, with `keep_copy`, the request
    /// again for a retry. A failure returns the request when it may be sent again: when none
    /// of it was sent, or with `keep_copy`.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        keep_copy: bool,
        limits: AttemptLimits,
        interim: Option<&Slot>,
    ) -> Result<Sent, Failed> {
        let AttemptLimits {
            connect: connect_timeout,
            response: response_timeout,
            max_idle,
            response_buffer,
        } = limits;
        let up = self.upstream.load_full();
        let own_client = own_client_enabled()
            && up.protocol == UpstreamProtocol::H1
            && up.tls.is_none()
            && up.send_proxy.is_none()
            && req.body().is_end_stream()
            && !req.headers().contains_key(CONNECTION);
        if own_client {
            let t = (connect_timeout, response_timeout, max_idle);
            return self
                .send_raw(req, &up, keep_copy, t, interim, response_buffer)
                .await;
        }
        let copy = keep_copy.then(|| copy_request(&req));
        let mut req = req;
        if let Some(interim) = interim.map(|slot| slot.get_or_init(Default::default)) {
            // hyper's client hands a 1xx to this callback on its connection's task, which
            // then wakes this one (the client connection's) to write it.
            let sink = interim.clone();
            hyper::ext::on_informational(&mut req, move |res| {
                if Interim::forwards(res.status()) {
                    sink.push(res.status(), res.headers());
                }
            });
            std::future::poll_fn(|cx| {
                interim.watch(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        // Boxed: hyper's client futures would otherwise make this future (and every one
        // that awaits it, up to the connection's) 1.6 KB larger, and an async call copies
        // its callee whole, level by level, for every request, own client included.
        let sending = self.send_hyper(req, &up, connect_timeout, response_timeout, max_idle);
        match Box::pin(sending).await {
            Ok((resp, tx, connect)) => Ok(Sent {
                response: resp.map(UpstreamIncoming::Hyper),
                conn: Some(tx),
                request: copy,
                connect,
            }),
            Err(mut failed) => {
                failed.request = failed.request.or(copy);
                Err(failed)
            }
        }
    }

    /// A bodiless request over the own HTTP/1.1 client: on an idle connection, or a new one
    /// when none is idle or the idle one turns out closed before it answered anything.
    async fn send_raw(
        &self,
        mut req: Request<RequestBody>,
        up: &Upstream,
        keep_copy: bool,
        (connect_timeout, response_timeout, max_idle): (Duration, Duration, Duration),
        interim: Option<&Slot>,
        response_buffer: usize,
    ) -> Result<Sent, Failed> {
        let addr = self.addr;
        connect::prepare(&mut req, false, up, addr);
        let head_request = req.method() == Method::HEAD;
        let idempotent = req.method().is_idempotent();
        let mut idle = self.take_raw(max_idle, up.generation);
        let mut connect = None;
        loop {
            let reused = idle.is_some();
            let connect_start = Instant::now();
            let mut conn = match idle.take() {
                Some(conn) => conn,
                None => match raw::connect(addr, connect_timeout).await {
                    Ok(stream) => {
                        connect = Some(connect_start.elapsed());
                        RawConn::new(stream, up.generation)
                    }
                    Err(raw::ConnectError::Timeout) => {
                        let error = UpstreamError::ConnectTimeout {
                            addr,
                            after: connect_timeout,
                        };
                        return Err(Failed::unsent(error, req));
                    }
                    Err(raw::ConnectError::Io(source)) => {
                        let error = UpstreamError::Connect { addr, source };
                        return Err(Failed::unsent(error, req));
                    }
                },
            };
            conn.limit_reads(response_buffer);
            conn.encode(&req);
            match conn.exchange(head_request, response_timeout, interim).await {
                Ok(resp) => {
                    return Ok(Sent {
                        response: resp.map(UpstreamIncoming::Raw),
                        conn: None,
                        request: keep_copy.then_some(req),
                        connect,
                    })
                }
                Err(RawError::Timeout) => {
                    let error = UpstreamError::ResponseTimeout {
                        addr,
                        after: response_timeout,
                    };
                    return Err(Failed {
                        error,
                        request: keep_copy.then_some(req),
                    });
                }
                // The backend closed the reused connection under us: nothing of it was read
                // (or, for an idempotent request, answered), so send it on a fresh one.
                Err(e) if reused && (e.unsent() || (idempotent && e.nothing_received())) => {
                    tracing::debug!(backend = %addr, error = %e, "reused connection closed: resending on a new one");
                }
                Err(source) => {
                    let resend = keep_copy || source.unsent();
                    return Err(Failed {
                        error: UpstreamError::Raw { addr, source },
                        request: resend.then_some(req),
                    });
                }
            }
        }
    }

    /// A request over hyper's client (bodies, upgrades, TLS, HTTP/2, PROXY headers).
    async fn send_hyper(
        &self,
        mut req: Request<RequestBody>,
        up: &Arc<Upstream>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle: Duration,
    ) -> Result<(Response<Incoming>, Sender, Option<Duration>), Failed> {
        let addr = self.addr;
        let timed_out = || UpstreamError::ResponseTimeout {
            addr,
            after: response_timeout,
        };
        // `send_proxy`: a connection names one client, so it is never reused nor shared.
        let private = up.send_proxy.is_some();
        let client = req.extensions().get::<crate::l4::ProxyAddrs>().copied();
        // A gRPC call without a deadline: the wait restarts while its stream flows.
        let progress = req.extensions().get::<Progress>().cloned();
        let mut idle = match private {
            true => None,
            false => self.take_idle(max_idle, up.generation).await,
        };
        let mut opener = None;
        if idle.is_none() && !private && up.protocol == UpstreamProtocol::H2 {
            // One opens, the others share what it opened (`h2_open`).
            opener = self.h2_opening.enter(connect_timeout).await;
            if opener.is_none() {
                idle = self.take_idle(max_idle, up.generation).await;
            }
        }
        if let Some(mut tx) = idle {
            connect::prepare(&mut req, tx.is_h2(), up, addr);
            match within(response_timeout, progress.as_ref(), tx.try_send(req)).await {
                Err(_) => return Err(Failed::sent(timed_out())),
                Ok(Ok(resp)) => return Ok((resp, tx, None)),
                Ok(Err(mut e)) => match e.take_message() {
                    // The backend closed the idle connection before our request went out:
                    // nothing was sent, so send it on a fresh connection.
                    Some(unsent) => req = unsent,
                    None => {
                        let source = e.into_error();
                        return Err(Failed::sent(UpstreamError::Request { addr, source }));
                    }
                },
            }
        }
        let connect_start = Instant::now();
        let mut tx = match self.open(addr, connect_timeout, client).await {
            Ok(tx) => tx,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        let connect = Some(connect_start.elapsed());
        if let Some(shared) = tx.share().filter(|_| !private) {
            let _ = self.queue().push(Idle {
                tx: shared,
                since: Instant::now(),
            });
        }
        // The shared handle is in the queue: the requests waiting for it take it.
        drop(opener);
        connect::prepare(&mut req, tx.is_h2(), up, addr);
        match within(response_timeout, progress.as_ref(), tx.try_send(req)).await {
            Err(_) => Err(Failed::sent(timed_out())),
            Ok(Ok(resp)) => Ok((resp, tx, connect)),
            Ok(Err(mut e)) => {
                let request = e.take_message();
                let source = e.into_error();
                Err(Failed {
                    error: UpstreamError::Request { addr, source },
                    request,
                })
            }
        }
    }

    /// One request on a new connection to `target` with the backend's settings (TLS,
    /// protocol): the active health check. The connection is not pooled.
    pub async fn probe(
        &self,
        target: SocketAddr,
        mut req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let up = self.upstream.load_full();
        let mut tx = self.open(target, timeout, None).await?;
        connect::prepare(&mut req, tx.is_h2(), &up, target);
        tx.try_send(req).await.map_err(|e| UpstreamError::Request {
            addr: target,
            source: e.into_error(),
        })
    }
}

/// A response head from a backend.
pub struct Sent {
    pub response: Response<UpstreamIncoming>,
    /// The hyper connection, to check in after a complete body (`None` for the own client,
    /// whose connection is checked in by its body).
    pub conn: Option<Sender>,
    /// The request again, when the caller asked to keep a copy (for a retry on status).
    pub request: Option<Request<RequestBody>>,
    /// How long opening a new connection took (TCP, and TLS or HTTP/2 handshakes); `None`
    /// on a reused one.
    pub connect: Option<Duration>,
}

/// A failed send: the error, and the request when it may be sent again (none of it reached
/// the backend, or a copy was asked for).
#[derive(Debug)]
pub struct Failed {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
}

impl Failed {
    fn sent(error: UpstreamError) -> Failed {
        Failed {
            error,
            request: None,
        }
    }

    fn unsent(error: UpstreamError, request: Request<RequestBody>) -> Failed {
        Failed {
            error,
            request: Some(request),
        }
    }
}

/// `AUTOLB_UPSTREAM_CLIENT=hyper` sends every request through hyper's client (for
/// comparison in benchmarks, or as a way around a backend the own client trips on).
fn own_client_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("AUTOLB_UPSTREAM_CLIENT").map_or(true, |v| v != "hyper"))
}

/// A bodiless copy of a request's head, for resending it after it was sent (idempotent
/// method, no body).
fn copy_request(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut parts: Parts = Request::new(()).into_parts().0;
    parts.method = req.method().clone();
    parts.uri = req.uri().clone();
    parts.version = req.version();
    parts.headers = req.headers().clone();
    if let Some(addrs) = req.extensions().get::<crate::l4::ProxyAddrs>() {
        parts.extensions.insert(*addrs);
    }
    Request::from_parts(parts, RequestBody::Empty)
}
