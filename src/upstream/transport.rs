//! The transport seam of a backend's connection pool: how a request is carried and where
//! its connection waits while idle. Two transports implement it, each in one file:
//! `hyper_client.rs` (hyper's client: bodies, upgrades, TLS, HTTP/2, PROXY headers) and
//! `own_client.rs` (autolb's HTTP/1.1 client for bodiless requests to plain backends).
//! `ConnPool::send` gives a request to the first that carries it; a connection goes back to
//! the transport it came from (`ConnPool::checkin`, through `Reusable`).

use std::sync::Arc;

use hyper::Request;

use super::connect::Upstream;
use super::interim::Slot;
use super::RequestBody;
use super::{AttemptLimits, ConnPool, Failed, Sent};

pub(crate) trait Transport {
    /// One of its connections, as it waits while idle.
    type Conn;

    /// Whether it carries `req` to a backend with settings `up`.
    fn carries(up: &Upstream, req: &Request<RequestBody>) -> bool;

    /// Send `req` and wait up to `limits.response` for the response head (see
    /// `ConnPool::send`).
    async fn send(
        pool: &ConnPool,
        req: Request<RequestBody>,
        up: &Arc<Upstream>,
        keep_copy: bool,
        limits: AttemptLimits,
        interim: Option<&Slot>,
    ) -> Result<Sent, Failed>;

    /// Take back a connection whose last response was read completely (dropped, so closed,
    /// when it may not be reused).
    fn checkin(pool: &ConnPool, conn: Self::Conn);

    /// Its idle connections to the backend, on every worker.
    fn idle_count(pool: &ConnPool) -> usize;
}

/// A connection that goes back to the transport it came from.
pub(crate) trait Reusable: Sized {
    type Transport: Transport<Conn = Self>;
}
