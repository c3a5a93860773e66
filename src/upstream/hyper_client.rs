//! hyper's client as a transport: requests with bodies, upgrades, TLS, HTTP/2 and PROXY
//! headers. Its idle HTTP/1.1 connections are a lock-free queue per worker, made on the
//! worker's first request to the backend (a bounded queue of 1,024 slots is ~48 KiB: a
//! backend nobody sends to should not cost that per worker), checked in after a complete
//! response. HTTP/2 connections are shared by concurrent requests up to the backend's
//! stream limit (`h2_conns.rs`); when all are full another is opened, one at a time
//! (`h2_open.rs`).

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::time::{Duration, Instant};

use super::connect::{self, Upstream};
use super::h2_conns::H2Conns;
use super::h2_open::{Entered, Opener};
use super::interim::{Interim, Slot};
use super::progress::{within, Progress};
use super::transport::Transport;
use super::{
    copy_request, AttemptLimits, Conn, ConnPool, Failed, Sender, Sent, UpstreamError,
    MAX_IDLE_PER_WORKER,
};
use super::{RequestBody, UpstreamIncoming};
use crate::config::UpstreamProtocol;
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

    /// An idle HTTP/1.1 connection younger than `max_idle`, still open and of the current
    /// settings.
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
                Ok(()) => return Some(tx),
                Err(e) => {
                    tracing::debug!(backend = %pool.addr, error = %e, "idle connection unusable")
                }
            }
        }
        None
    }

    /// This worker's shared HTTP/2 connections of `pool`.
    fn h2(pool: &ConnPool) -> &H2Conns {
        &pool.h2[worker_id() % pool.h2.len()]
    }

    /// A stream on a shared HTTP/2 connection with room for it; when every one is full (or
    /// there is none), wait for the request opening one, or become that request (`Some`
    /// opener). `(None, None)`: open a connection of its own (the opener failed, or the
    /// wait reached `connect_timeout`).
    async fn h2_stream(
        pool: &ConnPool,
        max_idle: Duration,
        generation: u64,
        connect_timeout: Duration,
    ) -> (Option<Sender>, Option<Opener<'_>>) {
        let deadline = Instant::now() + connect_timeout;
        loop {
            if let Some((tx, slot)) = HyperClient::h2(pool).take(max_idle, generation) {
                let sender = Sender {
                    conn: Conn::H2(tx),
                    generation,
                    slot: Some(slot),
                };
                return (Some(sender), None);
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match pool.h2_opening.enter(wait).await {
                Entered::Opener(opener) => return (None, Some(opener)),
                Entered::Opened if !wait.is_zero() => {}
                Entered::Opened | Entered::GaveUp => return (None, None),
            }
        }
    }

    /// A request over hyper's client: on an idle HTTP/1.1 connection, or a stream of a
    /// shared HTTP/2 one, else a new connection.
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
        let shared_h2 = !private && up.protocol == UpstreamProtocol::H2;
        let client = req
            .extensions()
            .get::<crate::proxy_proto::ProxyAddrs>()
            .copied();
        // A gRPC call without a deadline: the wait restarts while its stream flows.
        let progress = req.extensions().get::<Progress>().cloned();
        let (idle, opener) = match (private, shared_h2) {
            (true, _) => (None, None),
            (false, true) => {
                HyperClient::h2_stream(pool, max_idle, up.generation, connect_timeout).await
            }
            (false, false) => (HyperClient::take(pool, max_idle, up.generation).await, None),
        };
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
        let (mut tx, peer) = match pool.open(addr, connect_timeout, client).await {
            Ok(opened) => opened,
            Err(error) => {
                if let Some(opener) = opener {
                    opener.failed();
                }
                return Err(Failed::unsent(error, req));
            }
        };
        if let (Some(peer), Conn::H2(h2), true) = (peer, &tx.conn, shared_h2) {
            // Shared once the backend said how many streams it takes (its SETTINGS come
            // right after the handshake), so that the waiting requests fill it up to that
            // and no further.
            peer.settled(connect_start + connect_timeout).await;
            tx.slot = Some(peer.slot());
            HyperClient::h2(pool).add(h2.clone(), peer, tx.generation);
        }
        let connect = Some(connect_start.elapsed());
        // The connection is shared: the requests waiting for it take their streams.
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
    /// shared already: dropping the handle gives its stream back).
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
        let h1: usize = pool
            .idle
            .iter()
            .filter_map(std::sync::OnceLock::get)
            .map(ArrayQueue::len)
            .sum();
        h1 + pool.h2.iter().map(H2Conns::idle_count).sum::<usize>()
    }
}

impl super::transport::Reusable for Sender {
    type Transport = HyperClient;
}
