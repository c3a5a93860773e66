//! Parked HTTP/1 connections (idle for `framed::PARK_AFTER`). A plain one leaves its task
//! and tokio's reactor: what it keeps (the socket; its context, with nothing allocated for
//! it alone; its deadline; what counts it as open) is one record in its worker's parking
//! lot (`lot`), woken when the client sends again, then served anew in a task of its own,
//! and parked again when idle. Nothing allocated while it was served stays, so the heap
//! pages that held it can be given back (`trim`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::front::Front;
use super::idle::Activity;
use super::{lot, serve_h1, Held, Serving, STOP_REQUEST_GRACE};
use crate::proxy::ParkedContext;
use crate::server::framed::{Framed, HeadWait};
use crate::server::lazy_tcp::LazyTcp;
use crate::server::Drain;

/// A parked plain HTTP/1 connection.
pub(super) struct Parked {
    /// Out of tokio's reactor while parked.
    pub(super) stream: std::net::TcpStream,
    ctx: ParkedContext,
    front: Option<Arc<Front>>,
    idle: Duration,
    peer: SocketAddr,
    pub(super) shutdown: watch::Receiver<Drain>,
    pub(super) drain: Option<Drain>,
    /// When the wait for the next request head ends: then it is closed.
    pub(super) deadline: Instant,
    _held: Held,
}

impl Parked {
    /// What `io`, served as `s`, keeps once parked (`ctx`: its context); `None` if its
    /// socket could not be kept.
    pub(super) fn new(
        io: Framed<LazyTcp>,
        s: Serving,
        ctx: ParkedContext,
        drain: Option<Drain>,
        held: Held,
    ) -> Option<Parked> {
        let deadline = io
            .head_deadline()
            .unwrap_or_else(|| Instant::now() + s.idle);
        let stream = match io.into_inner().into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(client = %s.peer, error = %e, "cannot park a connection: closed");
                return None;
            }
        };
        Some(Parked {
            stream,
            ctx,
            front: s.front,
            idle: s.idle,
            peer: s.peer,
            shutdown: s.shutdown,
            drain,
            deadline,
            _held: held,
        })
    }

    /// A drain began while parked: after a stop, the client has a short while to send.
    pub(super) fn drain(&mut self, d: Drain) {
        if self.drain.is_none() {
            self.drain = Some(d);
            if d != Drain::Handover {
                self.deadline = self.deadline.min(Instant::now() + STOP_REQUEST_GRACE);
            }
        }
    }

    /// Wait in this worker's parking lot; in a task of its own if the lot cannot be had.
    pub(super) fn park(self) {
        if let Some(p) = lot::park(self) {
            tokio::spawn(p.wait_in_task());
        }
    }

    async fn wait_in_task(mut self) {
        let tcp = match TcpStream::from_std(self.stream) {
            Ok(tcp) => tcp,
            Err(e) => return tracing::debug!(error = %e, "cannot watch a parked connection"),
        };
        let woke = wait(
            &tcp,
            Some(self.deadline),
            &mut self.shutdown,
            &mut self.drain,
        )
        .await;
        let Ok(stream) = tcp.into_std() else { return };
        self.stream = stream;
        if woke {
            self.serve().await;
        }
    }

    /// The client sent: serve it (in a task of its own), and park it again when idle.
    pub(super) async fn serve(self) {
        let Parked {
            stream,
            ctx,
            front,
            idle,
            peer,
            shutdown,
            mut drain,
            _held,
            ..
        } = self;
        // Readable (the client sent): read before it is registered with the reactor.
        let stream = LazyTcp::fresh(stream);
        let activity = Activity::new();
        if drain.is_some() {
            activity.drain();
        }
        let limits = ctx.limits();
        let head_timeout = limits.header_timeout.map_or(idle, |t| t.min(idle));
        let head_wait = HeadWait::new(activity.clone(), head_timeout);
        let shared = Arc::new(ctx.unpark());
        let io = Framed::new(stream, limits, head_wait, shared.clone());
        let serving = Serving {
            ctx: shared,
            front,
            idle,
            peer,
            shutdown,
            activity,
        };
        // Boxed: spawning moves a future whole.
        let Some((io, s)) = Box::pin(serve_h1(io, serving, &mut drain, true)).await else {
            return;
        };
        if let Some(parked) = Parked::new(io, s, ctx, drain, _held) {
            parked.park();
        }
    }
}

/// A parked connection's wait in a task: for the client's next bytes (true: serve it
/// again), or its close (false) at `deadline` (none: serve again at once), or as a drain
/// says (see `serve_h1`; `drain` notes one that begins).
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
