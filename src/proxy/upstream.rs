//! Connections to one backend: per-worker lock-free idle queues, connect with a timeout
//! (TLS and HTTP/2 when the pool asks for them, see `connect`), and a request sent on a reused
//! connection that turns out closed is resent once on a fresh one (it was never written).
//! HTTP/1.1 connections carry one request at a time and are checked in after a complete
//! response; an HTTP/2 connection stays in the queue and is shared by concurrent requests.

mod connect;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::{Request, Response};
use tokio::time::Instant;

use super::body::RequestBody;
use crate::config;
use crate::server::worker_id;
use connect::Upstream;

/// Idle connections kept per worker and backend.
const MAX_IDLE_PER_WORKER: usize = 1024;

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

/// An HTTP/1.1 or HTTP/2 client connection.
enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

/// A connection to a backend, as requests hold it.
pub struct Sender {
    conn: Conn,
    generation: u64,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("h2", &self.is_h2())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match &self.conn {
            Conn::H1(tx) => tx.is_closed(),
            Conn::H2(tx) => tx.is_closed(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.conn, Conn::H2(_))
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match &mut self.conn {
            Conn::H1(tx) => tx.ready().await,
            Conn::H2(tx) => tx.ready().await,
        }
    }

    async fn try_send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match &mut self.conn {
            Conn::H1(tx) => tx.try_send_request(req).await,
            Conn::H2(tx) => tx.try_send_request(req).await,
        }
    }

    /// Another handle on a shared (HTTP/2) connection.
    fn share(&self) -> Option<Sender> {
        match &self.conn {
            Conn::H2(tx) => Some(Sender {
                conn: Conn::H2(tx.clone()),
                generation: self.generation,
            }),
            Conn::H1(_) => None,
        }
    }
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Connections to one backend address, one idle queue per worker thread so that workers
/// never contend, and the connection settings (TLS, protocol) of the backend's pool.
pub struct ConnPool {
    addr: SocketAddr,
    idle: Box<[ArrayQueue<Idle>]>,
    upstream: ArcSwap<Upstream>,
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
            idle: (0..workers.max(1))
                .map(|_| ArrayQueue::new(MAX_IDLE_PER_WORKER))
                .collect(),
            upstream: ArcSwap::from_pointee(Upstream::plain()),
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

    fn queue(&self) -> &ArrayQueue<Idle> {
        &self.idle[worker_id() % self.idle.len()]
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|q| q.len()).sum()
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
        let conn = connect::connect(&up, addr, timeout, client).await?;
        Ok(Sender {
            conn,
            generation: up.generation,
        })
    }

    /// Send `req` and wait up to `response_timeout` for the response head. Returns the
    /// response and the connection, to be checked in once the response body is complete.
    /// On failure the request comes back when none of it was sent.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle: Duration,
    ) -> Result<(Response<Incoming>, Sender), Failed> {
        let addr = self.addr;
        let timed_out = || UpstreamError::ResponseTimeout {
            addr,
            after: response_timeout,
        };
        let up = self.upstream.load_full();
        // `send_proxy`: a connection names one client, so it is never reused nor shared.
        let private = up.send_proxy.is_some();
        let client = req.extensions().get::<crate::l4::ProxyAddrs>().copied();
        let idle = match private {
            true => None,
            false => self.take_idle(max_idle, up.generation).await,
        };
        if let Some(mut tx) = idle {
            connect::prepare(&mut req, tx.is_h2(), &up, addr);
            match tokio::time::timeout(response_timeout, tx.try_send(req)).await {
                Err(_) => return Err(Failed::sent(timed_out())),
                Ok(Ok(resp)) => return Ok((resp, tx)),
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
        let mut tx = match self.open(addr, connect_timeout, client).await {
            Ok(tx) => tx,
            Err(error) => {
                return Err(Failed {
                    error,
                    request: Some(req),
                })
            }
        };
        if let Some(shared) = tx.share().filter(|_| !private) {
            let _ = self.queue().push(Idle {
                tx: shared,
                since: Instant::now(),
            });
        }
        connect::prepare(&mut req, tx.is_h2(), &up, addr);
        match tokio::time::timeout(response_timeout, tx.try_send(req)).await {
            Err(_) => Err(Failed::sent(timed_out())),
            Ok(Ok(resp)) => Ok((resp, tx)),
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

/// A failed send: the error, and the request when none of it reached the backend.
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
}
