//! Everything between the proxy and a backend's socket, below the runtime (a backend holds
//! its `ConnPool`), the proxy and the health checks: the request body sent (`request_body`:
//! the client's, paced and bounded by `client_body`, read from `downstream`), the response
//! body received (`incoming`), 1xx heads on their way (`interim`), and the connections.
//!
//! Connections to one backend: per-worker idle connections (a lock-free queue of hyper's,
//! a LIFO stack of the own client's, see `idle`), connect with a timeout
//! (TLS and HTTP/2 when the pool asks for them, see `connect`), and a request sent on a reused
//! connection that turns out closed is resent once on a fresh one (it was never written).
//! HTTP/1.1 connections carry one request at a time and are checked in after a complete
//! response; HTTP/2 connections are shared by concurrent requests, each up to the backend's
//! stream limit, and another is opened when all are full (`h2_conns`, `h2_peer`).
//! Requests are carried by one of two transports behind one trait (`transport`): hyper's
//! client (`hyper_client`) or, for bodiless requests to plain HTTP/1.1 backends, autolb's
//! own (`own_client`, over `raw`).

pub mod client_body;
pub mod client_fault;
mod connect;
pub mod downstream;
mod h2_conns;
mod h2_open;
mod h2_peer;
pub mod hop_by_hop;
mod hyper_client;
mod idle;
pub mod incoming;
pub mod interim;
mod own_client;
pub mod progress;
mod raw;
mod raw_body;
pub mod request_body;
mod sender;
mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use http::request::Parts;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::config;
use connect::Upstream;
use hyper_client::HyperClient;
pub use incoming::{BodyError, UpstreamIncoming};
use interim::Slot;
use own_client::OwnClient;
pub use raw::{parse_response_head, RawConn, RawError};
pub use raw_body::{decode_chunked_body, RawBody, ResponseFraming};
pub use request_body::RequestBody;
use sender::Conn;
pub use sender::Sender;
use transport::{Reusable, Transport};

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

/// Connections to one backend address, one idle queue per worker thread so that workers
/// never contend, and the connection settings (TLS, protocol) of the backend's pool.
pub struct ConnPool {
    addr: SocketAddr,
    /// Idle connections of hyper's clients, per worker; each store is made on its worker's
    /// first request here (a bounded queue of 1,024 slots is ~48 KiB: a backend nobody
    /// sends to should not cost that per worker).
    idle: Box<[OnceLock<ArrayQueue<hyper_client::Idle>>]>,
    /// Idle connections of autolb's own HTTP/1.1 client, per worker.
    raw_idle: Box<[idle::IdleStack<RawConn>]>,
    upstream: ArcSwap<Upstream>,
    /// `protocol: h2`: the shared connections, per worker.
    h2: Box<[h2_conns::H2Conns]>,
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
            h2: (0..workers.max(1)).map(|_| Default::default()).collect(),
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

    pub fn idle_count(&self) -> usize {
        HyperClient::idle_count(self) + OwnClient::idle_count(self)
    }

    /// Take back a connection whose last response was read completely, into the idle
    /// connections of the transport it came from.
    pub(crate) fn checkin<C: Reusable>(&self, conn: C) {
        C::Transport::checkin(self, conn);
    }

    /// A new connection to `addr` (the backend's, or a health check's port), and for
    /// HTTP/2 what the backend allows on it.
    /// `client`: the addresses of the PROXY header (`send_proxy`; `None`: LOCAL/UNKNOWN).
    async fn open(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        client: Option<crate::proxy_proto::ProxyAddrs>,
    ) -> Result<(Sender, Option<Arc<h2_peer::Peer>>), UpstreamError> {
        let up = self.upstream.load_full();
        // Boxed: a handshake (TCP, PROXY header, TLS, HTTP/2) is an 8 KB future, needed once
        // per connection; inline it would be copied with every request's future.
        let (conn, peer) = Box::pin(connect::connect(&up, addr, timeout, client)).await?;
        let sender = Sender {
            conn,
            generation: up.generation,
            slot: None,
        };
        Ok((sender, peer))
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
        let up = self.upstream.load_full();
        if OwnClient::carries(&up, &req) {
            OwnClient::send(self, req, &up, keep_copy, limits, interim).await
        } else {
            HyperClient::send(self, req, &up, keep_copy, limits, interim).await
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
        let (mut tx, _) = self.open(target, timeout, None).await?;
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

/// A bodiless copy of a request's head, for resending it after it was sent (idempotent
/// method, no body).
fn copy_request(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut parts: Parts = Request::new(()).into_parts().0;
    parts.method = req.method().clone();
    parts.uri = req.uri().clone();
    parts.version = req.version();
    parts.headers = req.headers().clone();
    if let Some(addrs) = req.extensions().get::<crate::proxy_proto::ProxyAddrs>() {
        parts.extensions.insert(*addrs);
    }
    Request::from_parts(parts, RequestBody::Empty)
}
