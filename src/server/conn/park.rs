//! Parked HTTP/1 connections (idle for `framed::PARK_AFTER`). A plain one leaves its task:
//! what it keeps (the socket, registered anew; a copy of its context; what counts it as
//! open) waits in a small task of its own, made then, for the client's next bytes (served
//! anew, in that task), its idle deadline, or a drain (see `serve_h1`). Nothing allocated
//! while it was served stays, so the heap pages that held it can be given back (`trim`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::front::Front;
use super::idle::Activity;
use super::{serve_h1, Held, Serving, STOP_REQUEST_GRACE};
use crate::proxy::ConnContext;
use crate::server::framed::{Framed, HeadWait};
use crate::server::Drain;

/// A parked plain HTTP/1 connection.
pub(super) struct Parked {
    stream: TcpStream,
    /// Held in the task itself while parked (one allocation fewer), shared while served.
    ctx: ConnContext,
    front: Option<Arc<Front>>,
    idle: Duration,
    peer: SocketAddr,
    shutdown: watch::Receiver<Drain>,
    drain: Option<Drain>,
    /// When the wait for the next request head ends.
    deadline: Option<Instant>,
    _held: Held,
}

impl Parked {
    /// What `io`, served as `s`, keeps once parked; `None` if its socket could not be kept.
    pub(super) fn new(
        io: Framed<TcpStream>,
        s: Serving,
        drain: Option<Drain>,
        held: Held,
    ) -> Option<Parked> {
        let deadline = io.head_deadline();
        // Registered anew: tokio's record of the socket is allocated now, with the rest.
        let stream = match io.into_inner().into_std().and_then(TcpStream::from_std) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(client = %s.peer, error = %e, "cannot park a connection: closed");
                return None;
            }
        };
        Some(Parked {
            stream,
            ctx: s.ctx.moved(),
            front: s.front,
            idle: s.idle,
            peer: s.peer,
            shutdown: s.shutdown,
            drain,
            deadline,
            _held: held,
        })
    }

    /// Wait for the client, serve it when it sends, and park again, until the connection
    /// ends.
    pub(super) async fn serve(self) {
        let Parked {
            mut stream,
            mut ctx,
            front,
            idle,
            peer,
            mut shutdown,
            mut drain,
            mut deadline,
            _held,
        } = self;
        let head_timeout = ctx.limits.header_timeout.map_or(idle, |t| t.min(idle));
        loop {
            if !wait(&stream, deadline, &mut shutdown, &mut drain).await {
                return;
            }
            let activity = Activity::new();
            if drain.is_some() {
                activity.drain();
            }
            let head_wait = HeadWait::new(activity.clone(), head_timeout);
            let shared = Arc::new(ctx);
            let io = Framed::new(stream, &shared.limits, head_wait, shared.clone());
            let serving = Serving {
                ctx: shared,
                front: front.clone(),
                idle,
                peer,
                shutdown,
                activity,
            };
            // Boxed: the waiting task does not keep room for the connection being served.
            let Some((io, s)) = Box::pin(serve_h1(io, serving, &mut drain, true)).await else {
                return;
            };
            deadline = io.head_deadline();
            stream = io.into_inner();
            shutdown = s.shutdown;
            // Served: nothing else holds it any more (else a copy).
            ctx = Arc::try_unwrap(s.ctx).unwrap_or_else(|shared| shared.moved());
        }
    }
}

/// A parked connection's wait: for the client's next bytes (true: serve it again), or its
/// close (false) at `deadline` (none: serve again at once), or as a drain says (see
/// `serve_h1`; `drain` notes one that begins).
pub(super) async fn wait(
    tcp: &TcpStream,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<Drain>,
    drain: &mut Option<Drain>,
) -> bool {
    let Some(mut deadline) = deadline else {
        return true;
    };
    if drain.is_some_and(|d| d != Drain::Handover) {
        deadline = deadline.min(Instant::now() + STOP_REQUEST_GRACE);
    }
    loop {
        tokio::select! {
            // An error too: hyper reads it and ends the connection.
            _ = tcp.readable() => return true,
            () = tokio::time::sleep_until(deadline) => return false,
            _ = shutdown.changed(), if drain.is_none() => {
                let d = *shutdown.borrow();
                *drain = Some(d);
                if d != Drain::Handover {
                    deadline = deadline.min(Instant::now() + STOP_REQUEST_GRACE);
                }
            }
        }
    }
}
