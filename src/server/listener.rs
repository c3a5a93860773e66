//! Listening sockets (SO_REUSEPORT, one per worker) and their accept loops; per-listener
//! connection gauges.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conn;
use super::lazy_tcp::LazyTcp;
use crate::config::Protocol as ListenerProtocol;

/// Live counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open client connections (`autolb_downstream_connections`).
    pub connections: AtomicI64,
    pub accepted: AtomicU64,
    /// QUIC connection attempts by outcome (`http3: true`).
    pub quic: QuicHandshakes,
}

/// QUIC connection attempts of a listener by outcome (`autolb_quic_handshakes_total`). The
/// endpoint speaks QUIC version 1 only (RFC 9000), so every attempt counted is of version 1.
#[derive(Debug, Default)]
pub struct QuicHandshakes {
    /// The listener has served HTTP/3 (its counts are shown).
    pub shown: AtomicBool,
    /// Completed handshakes.
    pub completed: AtomicU64,
    /// Handshakes that failed or timed out.
    pub failed: AtomicU64,
    /// Attempts answered with a Retry (address validation under a flood, or `retry: always`).
    pub retry: AtomicU64,
    /// Attempts refused (`max_handshakes` in progress, or the listener's connection limits).
    pub refused: AtomicU64,
}

impl QuicHandshakes {
    /// `(result, count)` for the metric.
    pub fn counts(&self) -> [(&'static str, u64); 4] {
        [
            ("completed", self.completed.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
            ("retry", self.retry.load(Ordering::Relaxed)),
            ("refused", self.refused.load(Ordering::Relaxed)),
        ]
    }
}

/// Decrements the listener's connection gauge when the connection ends.
pub(crate) struct ConnectionGuard(pub Arc<ListenerStats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections the kernel completes per socket before autolb accepts them.
const LISTEN_BACKLOG: usize = 4096;

/// Bind `count` sockets to `addr` with SO_REUSEPORT (the kernel spreads connections over
/// them). Port 0 gets one ephemeral port shared by all of them.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG as i32)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Everything an accept loop needs.
pub(crate) struct AcceptContext {
    pub name: String,
    pub services: super::Services,
    pub stats: Arc<ListenerStats>,
    /// The listener's open connections (`limits.max_connections*`).
    pub admission: Arc<super::admission::Counts>,
    pub shutdown: watch::Receiver<super::Drain>,
    /// This listener alone is stopped (removed or moved by a reload).
    pub stop: watch::Receiver<bool>,
}

/// Where a worker accepts its connections.
enum Acceptor {
    /// `accept4` on the listening socket, watched by the reactor: the accepted socket is
    /// served before it is registered (`LazyTcp`).
    Lazy(AsyncFd<std::net::TcpListener>),
    /// `AUTOLB_ACCEPT=tokio`: tokio's accept, which registers every accepted socket (as
    /// before; kept for comparisons).
    Tokio(TcpListener),
}

impl Acceptor {
    fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        if std::env::var("AUTOLB_ACCEPT").as_deref() == Ok("tokio") {
            return TcpListener::from_std(listener).map(Acceptor::Tokio);
        }
        Acceptor::watch(listener).map(Acceptor::Lazy)
    }

    // tokio's safe ways to watch a descriptor (`AsyncFd::new`) are deprecated as unsound;
    // their replacement is `unsafe`, with the descriptor's owner vouching for it. tokio's
    // `TcpListener` watches its socket too, but registers every socket it accepts.
    #[allow(unsafe_code)]
    fn watch(listener: std::net::TcpListener) -> io::Result<AsyncFd<std::net::TcpListener>> {
        // SAFETY: the `AsyncFd` owns the listener, so its descriptor stays open and names
        // the same socket until the `AsyncFd` is dropped or `into_inner` gives it back.
        unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    }

    async fn accept(&self) -> io::Result<(LazyTcp, SocketAddr)> {
        match self {
            Acceptor::Tokio(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((LazyTcp::Registered(stream), peer))
            }
            Acceptor::Lazy(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Ok(accepted) = ready.try_io(|l| accept_fresh(l.get_ref())) {
                    return accepted;
                }
            },
        }
    }

    fn into_std(self) -> io::Result<std::net::TcpListener> {
        match self {
            Acceptor::Tokio(l) => l.into_std(),
            Acceptor::Lazy(fd) => Ok(fd.into_inner()),
        }
    }
}

/// One `accept4` (non-blocking, close-on-exec: no further call to set them).
fn accept_fresh(listener: &std::net::TcpListener) -> io::Result<(LazyTcp, SocketAddr)> {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let (fd, addr) = rustix::net::acceptfrom_with(listener, flags)?;
    let stream = std::net::TcpStream::from(fd);
    let peer = match addr.and_then(|a| SocketAddr::try_from(a).ok()) {
        Some(peer) => peer,
        None => stream.peer_addr()?,
    };
    Ok((LazyTcp::fresh(stream), peer))
}

/// Accept connections until shutdown; each connection is served on this worker.
pub(crate) async fn accept_loop(listener: std::net::TcpListener, ctx: AcceptContext) {
    // The port clients reach (`http3: true` advertises it): looked up once, not per
    // connection.
    let port = listener.local_addr().map_or(0, |a| a.port());
    let listener = match Acceptor::new(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %ctx.name, error = %e, "cannot register listener");
            return;
        }
    };
    // https listeners take their TLS state (certificates, ALPN) from the registry.
    let https = ctx
        .services
        .runtime
        .snapshot()
        .listeners
        .iter()
        .any(|l| l.name == ctx.name && l.protocol == ListenerProtocol::Https);
    // tcp listeners proxy raw TCP (L4); the protocol changing restarts the listener.
    let tcp = ctx
        .services
        .runtime
        .snapshot()
        .listeners
        .iter()
        .any(|l| l.name == ctx.name && l.protocol == ListenerProtocol::Tcp);
    let tls = ctx.services.tls.listener(&ctx.name);
    if https && tls.is_none() {
        tracing::error!(listener = %ctx.name, "https listener without TLS setup: not serving it");
        return;
    }
    let to = Serve {
        ctx: &ctx,
        name: Arc::from(ctx.name.as_str()),
        tcp,
        tls: &tls,
        port,
    };
    let mut shutdown = ctx.shutdown.clone();
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => to.serve(stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.changed() => break,
            _ = stop.changed() => break,
        }
    }
    // A successor shares the socket and accepts what is queued on it.
    if *ctx.shutdown.borrow() == super::Drain::Handover {
        return;
    }
    // Connections the kernel completed before the stop are served (answered with
    // `Connection: close`) rather than reset by closing the socket under them; then the
    // socket closes here, and the kernel refuses new connections.
    let Ok(listener) = listener.into_std() else {
        return;
    };
    for _ in 0..LISTEN_BACKLOG {
        let Ok((stream, peer)) = accept_fresh(&listener) else {
            break;
        };
        to.serve(stream, peer);
    }
}

/// Where an accept loop's connections go.
struct Serve<'a> {
    ctx: &'a AcceptContext,
    /// The listener's name, shared by its connections (not copied for each).
    name: Arc<str>,
    tcp: bool,
    tls: &'a Option<Arc<crate::tls::TlsListener>>,
    /// The listener's port.
    port: u16,
}

impl Serve<'_> {
    /// Serve one accepted connection on this worker.
    fn serve(&self, stream: LazyTcp, peer: SocketAddr) {
        let ctx = self.ctx;
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard(ctx.stats.clone());
        if self.tcp {
            // L4 moves bytes both ways at once: registered from the start.
            let Ok(stream) = stream.into_tokio() else {
                return;
            };
            tokio::spawn(crate::l4::serve(
                stream,
                peer,
                ctx.services.runtime.clone(),
                self.name.clone(),
                guard,
            ));
            return;
        }
        // limits.max_connections / max_connections_per_ip: past them, closed.
        let Some(admitted) =
            super::admission::admit(&ctx.name, peer.ip(), &ctx.services.runtime, &ctx.admission)
        else {
            return;
        };
        // Boxed: the connection's future is several KB (hyper's connection state), and
        // spawning moves a future whole, several times over.
        let serving = Box::pin(conn::serve(
            stream,
            peer,
            self.port,
            ctx.services.clone(),
            self.name.clone(),
            ctx.shutdown.clone(),
            conn::Held {
                _gauge: guard,
                _admitted: admitted,
            },
            self.tls.clone(),
        ));
        tokio::spawn(serving);
    }
}
