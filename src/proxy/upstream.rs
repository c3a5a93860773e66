//! Keep-alive connections to one backend: per-worker lock-free idle queues, connect with a
//! timeout, and a request sent on a reused connection that turns out closed is resent once
//! on a fresh one (it was never written).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::body::RequestBody;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::server::worker_id;

/// Idle connections kept per worker and backend.
const MAX_IDLE_PER_WORKER: usize = 1024;

pub type Sender = http1::SendRequest<RequestBody>;

/// Why a backend gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
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
                | UpstreamError::Handshake { .. }
        )
    }
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Idle keep-alive connections to one backend address, one queue per worker thread so that
/// workers never contend.
pub struct ConnPool {
    addr: SocketAddr,
    idle: Box<[ArrayQueue<Idle>]>,
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
    pub fn new(addr: SocketAddr, workers: usize) -> ConnPool {
        ConnPool {
            addr,
            idle: (0..workers.max(1))
                .map(|_| ArrayQueue::new(MAX_IDLE_PER_WORKER))
                .collect(),
        }
    }

    fn queue(&self) -> &ArrayQueue<Idle> {
        &self.idle[worker_id() % self.idle.len()]
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|q| q.len()).sum()
    }

    /// An idle connection younger than `max_idle` that is still open.
    async fn take_idle(&self, max_idle: Duration) -> Option<Sender> {
        let queue = self.queue();
        while let Some(Idle { mut tx, since }) = queue.pop() {
            if since.elapsed() >= max_idle || tx.is_closed() {
                tracing::debug!(backend = %self.addr, closed = tx.is_closed(), "idle connection dropped");
                continue;
            }
            match tx.ready().await {
                Ok(()) => return Some(tx),
                Err(e) => {
                    tracing::debug!(backend = %self.addr, error = %e, "idle connection unusable")
                }
            }
        }
        None
    }

    /// Return a connection whose last response was read completely.
    pub fn checkin(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let _ = self.queue().push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    async fn connect(&self, timeout: Duration) -> Result<Sender, UpstreamError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr,
                    after: timeout,
                })
            }
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!(backend = %addr, "new backend connection");
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended");
            }
        });
        Ok(tx)
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
        if let Some(mut tx) = self.take_idle(max_idle).await {
            match tokio::time::timeout(response_timeout, tx.try_send_request(req)).await {
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
        let mut tx = match self.connect(connect_timeout).await {
            Ok(tx) => tx,
            Err(error) => {
                return Err(Failed {
                    error,
                    request: Some(req),
                })
            }
        };
        match tokio::time::timeout(response_timeout, tx.try_send_request(req)).await {
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
