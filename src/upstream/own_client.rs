//! autolb's own HTTP/1.1 client as a transport (`raw.rs`, `raw_body.rs`): bodiless
//! requests to plain HTTP/1.1 backends (no TLS, no PROXY header, no `Connection` header
//! from the client; `AUTOLB_UPSTREAM_CLIENT=hyper` turns it off). Its idle connections are a
//! LIFO stack per worker (`idle.rs`); a response body checks its connection in when it ends.

use std::sync::Arc;

use http::header::CONNECTION;
use http::Method;
use http_body::Body;
use hyper::Request;
use tokio::time::{Duration, Instant};

use super::connect::{self, Upstream};
use super::idle::IdleStack;
use super::interim::Slot;
use super::raw::{self, RawConn, RawError};
use super::transport::Transport;
use super::{AttemptLimits, ConnPool, Failed, Sent, UpstreamError};
use super::{RequestBody, UpstreamIncoming};
use crate::config::UpstreamProtocol;
use crate::sched::worker_id;

pub(crate) struct OwnClient;

impl OwnClient {
    /// This worker's idle connections of `pool`.
    fn idle(pool: &ConnPool) -> &IdleStack<RawConn> {
        &pool.raw_idle[worker_id() % pool.raw_idle.len()]
    }

    /// An idle connection of the own client, younger than `max_idle`, of the current
    /// settings, and not closed by the backend meanwhile.
    fn take(pool: &ConnPool, max_idle: Duration, generation: u64) -> Option<RawConn> {
        OwnClient::idle(pool).pop(max_idle, |c| c.generation == generation && !c.is_stale())
    }
}

impl Transport for OwnClient {
    type Conn = RawConn;

    fn carries(up: &Upstream, req: &Request<RequestBody>) -> bool {
        own_client_enabled()
            && up.protocol == UpstreamProtocol::H1
            && up.tls.is_none()
            && up.send_proxy.is_none()
            && req.body().is_end_stream()
            && !req.headers().contains_key(CONNECTION)
    }

    /// On an idle connection, or a new one when none is idle or the idle one turns out
    /// closed before it answered anything.
    async fn send(
        pool: &ConnPool,
        mut req: Request<RequestBody>,
        up: &Arc<Upstream>,
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
        let addr = pool.addr;
        connect::prepare(&mut req, false, up, addr);
        let head_request = req.method() == Method::HEAD;
        let idempotent = req.method().is_idempotent();
        let mut idle = OwnClient::take(pool, max_idle, up.generation);
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

    fn checkin(pool: &ConnPool, conn: RawConn) {
        if conn.generation != pool.upstream.load().generation {
            return;
        }
        conn.park();
        OwnClient::idle(pool).push(conn);
    }

    fn idle_count(pool: &ConnPool) -> usize {
        pool.raw_idle.iter().map(|q| q.len()).sum()
    }
}

impl super::transport::Reusable for RawConn {
    type Transport = OwnClient;
}

/// `AUTOLB_UPSTREAM_CLIENT=hyper` sends every request through hyper's client (for
/// comparison in benchmarks, or as a way around a backend the own client trips on).
fn own_client_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("AUTOLB_UPSTREAM_CLIENT").map_or(true, |v| v != "hyper"))
}
