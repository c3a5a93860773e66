//! hyper's client as a transport: requests with bodies, upgrades, TLS, HTTP/2 and PROXY
//! headers. Its idle connections are a lock-free queue per worker, made on the worker's
//! first request to the backend (a bounded queue of 1,024 slots is ~48 KiB: a backend
//! nobody sends to should not cost that per worker); an HTTP/1.1 connection is checked in
//! after a complete response, an HTTP/2 one stays in the queue, shared by concurrent
//! requests, and only one is opened at a time (`h2_open.rs`).

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::time::{Duration, Instant};

use super::connect::{self, Upstream};
use super::transport::Transport;
use super::{
    copy_request, AttemptLimits, ConnPool, Failed, Sender, Sent, UpstreamError, MAX_IDLE_PER_WORKER,
};
use crate::config::UpstreamProtocol;
use crate::proxy::body::{RequestBody, UpstreamIncoming};
use crate::proxy::grpc::{within, Progress};
use crate::proxy::interim::{Interim, Slot};
use crate::sched::worker_id;

/// An idle connection and since when.
pub(crate) struct Idle {
    tx: Sender,
    since: Instant,
}

pub(crate) struct HyperClient;

impl HyperClient {
    /// This worker's idle connections of `pool` (made on first use).
    fn idle(pool: &ConnPool) -> &ArrayQueue<Idle> {
        pool.idle[worker_id() % pool.idle.len()]
            .get_or_init(|| ArrayQueue::new(MAX_IDLE_PER_WORKER))
    }

    /// An idle connection younger than `max_idle`, still open and of the current settings.
    /// HTTP/2 connections go back into the queue at once, shared.
    async fn take(pool: &ConnPool, max_idle: Duration, generation: u64) -> Option<Sender> {
        let queue = HyperClient::idle(pool);
        // Bounded: each entry is looked at once at most.
        for _ in 0..queue.len() {
            let Some(Idle { mut tx, since }) = queue.pop() else {
                break;
            };
            if since.elapsed() >= max_idle || tx.is_closed() || tx.generation != generation {
                tracing::debug!(backend = %pool.addr, closed = tx.is_closed(), "idle connection dropped");
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
                    tracing::debug!(backend = %pool.addr, error = %e, "idle connection unusable")
                }
            }
        }
        None
    }

    /// A request over hyper's client: on an idle (or shared HTTP/2) connection, else a new
    /// one.
    async fn exchange(
        pool: &ConnPool,
        mut req: Request<RequestBody>,
        up: &Arc<Upstream>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle: Duration,
    ) -> Result<(Response<Incoming>, Sender, Option<Duration>), Failed> {
        let addr = pool.addr;
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
            false => HyperClient::take(pool, max_idle, up.generation).await,
        };
        let mut opener = None;
        if idle.is_none() && !private && up.protocol == UpstreamProtocol::H2 {
            // One opens, the others share what it opened (`h2_open`).
            opener = pool.h2_opening.enter(connect_timeout).await;
            if opener.is_none() {
                idle = HyperClient::take(pool, max_idle, up.generation).await;
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
        let mut tx = match pool.open(addr, connect_timeout, client).await {
            Ok(tx) => tx,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        let connect = Some(connect_start.elapsed());
        if let Some(shared) = tx.share().filter(|_| !private) {
            let _ = HyperClient::idle(pool).push(Idle {
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
}

impl Transport for HyperClient {
    type Conn = Sender;

    fn carries(_up: &Upstream, _req: &Request<RequestBody>) -> bool {
        true
    }

    async fn send(
        pool: &ConnPool,
        req: Request<RequestBody>,
        up: &Arc<Upstream>,
        keep_copy: bool,
        limits: AttemptLimits,
        interim: Option<&Slot>,
    ) -> Result<Sent, Failed> {
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
        let (connect, response, max_idle) = (limits.connect, limits.response, limits.max_idle);
        let sending = HyperClient::exchange(pool, req, up, connect, response, max_idle);
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

    /// Return a connection whose last response was read completely (HTTP/2 connections are
    /// shared from the queue already).
    fn checkin(pool: &ConnPool, tx: Sender) {
        let up = pool.upstream.load();
        if tx.is_closed() || tx.is_h2() || tx.generation != up.generation || up.send_proxy.is_some()
        {
            return;
        }
        let _ = HyperClient::idle(pool).push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    fn idle_count(pool: &ConnPool) -> usize {
        pool.idle
            .iter()
            .filter_map(std::sync::OnceLock::get)
            .map(ArrayQueue::len)
            .sum()
    }
}

impl super::transport::Reusable for Sender {
    type Transport = HyperClient;
}
