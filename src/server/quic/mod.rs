//! `http3: true`: an https listener's QUIC endpoint. One quinn endpoint on one UDP socket
//! bound to the listener's port (SO_REUSEPORT, so that a successor started by
//! `autolb run --upgrade` binds the port too). quinn's UDP layer (quinn-udp) sends with GSO
//! and receives with GRO and recvmmsg where the kernel offers them. New connections are
//! admitted under the `quic:` limits (handshakes in progress, Retry under a flood of
//! Initial packets, `limits.max_connections`), then served by `serve` until they close, go
//! idle, or a drain sends GOAWAY.

mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::listener::{ConnectionGuard, ListenerStats};
use super::Drain;
use crate::config::{Http3, RetryMode};

/// UDP socket buffers asked of the kernel (it caps them at `net.core.{r,w}mem_max`):
/// bursts of datagrams are queued rather than dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// Unidirectional streams a client may open: HTTP/3 uses three (control, QPACK encoder and
/// decoder); a few more for grease and extensions.
const MAX_UNI_STREAMS: u32 = 16;

/// QUIC version 1 (RFC 9000), the only one served.
const QUIC_V1: u32 = 0x0000_0001;

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("listener {name:?}: cannot bind UDP {addr} for HTTP/3: {reason}")]
    Bind {
        name: String,
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("listener {0:?}: http3 needs the listener's TLS setup")]
    NoTls(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("listener {name:?}: QUIC settings refused: {reason}")]
    Settings { name: String, reason: String },
}

/// What the accept loop and every connection of one endpoint share.
struct Shared {
    name: String,
    /// The endpoint's address.
    local: SocketAddr,
    services: super::Services,
    stats: Arc<ListenerStats>,
    /// The listener's open connections (`limits.max_connections*`), TCP and QUIC together.
    admission: Arc<super::admission::Counts>,
    settings: Http3,
    /// Handshakes in progress (`max_handshakes`).
    handshaking: AtomicUsize,
    /// Set once the endpoint stops taking connections: every connection says GOAWAY.
    goaway: watch::Sender<bool>,
}

/// A running QUIC endpoint of a listener.
pub(crate) struct Quic {
    endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub settings: Http3,
    stop: watch::Sender<bool>,
}

/// Bind the UDP socket: SO_REUSEPORT (a successor binds the same port while this process
/// drains), large buffers, non-blocking.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The endpoint's server config: TLS from the server's TLS store (same certificates
/// and SNI resolver as TCP), the transport limits of `settings`.
fn server_config(
    tls: &crate::tls::Store,
    name: &str,
    settings: &Http3,
) -> Result<quinn::ServerConfig, QuicError> {
    let tls = tls
        .listener(name)
        .ok_or_else(|| QuicError::NoTls(name.to_string()))?;
    let crypto = tls.quic_config(settings.early_data)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(settings.max_streams.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(settings.idle_timeout).ok());
    cfg.transport_config(Arc::new(transport));
    // Connection attempts waiting for the accept loop (it takes them at once).
    cfg.max_incoming(settings.max_handshakes);
    Ok(cfg)
}

impl Quic {
    /// Serve HTTP/3 for listener `name` on UDP `addr` (the TCP listener's address), on the
    /// runtime of `handle`, counting into the listener's statistics and connection counts.
    pub fn start(
        name: &str,
        addr: SocketAddr,
        settings: &Http3,
        services: &super::Services,
        (stats, admission): (Arc<ListenerStats>, Arc<super::admission::Counts>),
        shutdown: &watch::Receiver<Drain>,
        handle: &tokio::runtime::Handle,
    ) -> Result<Quic, QuicError> {
        let bind_err = |reason| QuicError::Bind {
            name: name.to_string(),
            addr,
            reason,
        };
        let settings_err = |reason: String| QuicError::Settings {
            name: name.to_string(),
            reason,
        };
        let server = server_config(&services.tls, name, settings)?;
        let socket = bind_udp(addr).map_err(bind_err)?;
        // What quinn-udp will use on this socket (logged: GSO/GRO depend on the kernel).
        let offload = quinn::udp::UdpSocketState::new((&socket).into())
            .map(|s| (s.max_gso_segments(), s.gro_segments()))
            .map_err(bind_err)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        // QUIC version 1 only (quinn would also take drafts 29 to 32): a client offering
        // another version is answered with Version Negotiation.
        endpoint_config.supported_versions(vec![QUIC_V1]);
        endpoint_config
            .max_udp_payload_size(settings.max_udp_payload)
            .map_err(|e| settings_err(e.to_string()))?;
        let _entered = handle.enter();
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let addr = endpoint.local_addr().map_err(bind_err)?;
        tracing::info!(
            listener = %name,
            addr = %addr,
            gso_segments = offload.0,
            gro_segments = offload.1,
            "listening for HTTP/3 (QUIC over UDP)"
        );
        let (stop, stop_rx) = watch::channel(false);
        stats.quic.shown.store(true, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            local: addr,
            services: services.clone(),
            stats,
            admission,
            settings: settings.clone(),
            handshaking: AtomicUsize::new(0),
            goaway: watch::channel(false).0,
        });
        handle.spawn(accept_loop(
            endpoint.clone(),
            shared,
            shutdown.clone(),
            stop_rx,
        ));
        Ok(Quic {
            endpoint,
            addr,
            settings: settings.clone(),
            stop,
        })
    }

    /// New settings (a reload) or certificates' TLS config for new connections; open ones
    /// keep theirs.
    pub fn update(
        &mut self,
        tls: &crate::tls::Store,
        name: &str,
        settings: &Http3,
    ) -> Result<(), QuicError> {
        let server = server_config(tls, name, settings)?;
        if settings.max_udp_payload != self.settings.max_udp_payload {
            tracing::warn!(listener = %name, "quic.max_udp_payload applies at the next restart");
        }
        self.endpoint.set_server_config(Some(server));
        self.settings = settings.clone();
        Ok(())
    }

    /// Stop taking connections; open ones get GOAWAY, finish their requests and close.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Admit connection attempts until a drain or the listener stops; then GOAWAY everywhere.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => admit(incoming, &shared),
                None => break,
            },
            _ = shutdown.changed() => break,
            _ = stop.changed() => break,
        }
    }
    // New connection attempts are refused from now on (a successor sharing the port takes
    // those the kernel gives it); open connections drain.
    endpoint.set_server_config(None);
    let _ = shared.goaway.send(true);
    endpoint.wait_idle().await;
    tracing::info!(listener = %shared.name, "HTTP/3 endpoint closed");
}

/// Counts a handshake in progress until dropped.
struct Handshaking(Arc<Shared>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection attempt: refused past `max_handshakes` in progress, sent a Retry when its
/// address is not validated yet and `retry` asks for it (always, or under a flood: half of
/// `max_handshakes` in progress), refused past `limits.max_connections`, else served.
fn admit(incoming: quinn::Incoming, shared: &Arc<Shared>) {
    let s = &shared.settings;
    let in_progress = shared.handshaking.load(Ordering::Relaxed);
    if in_progress >= s.max_handshakes {
        tracing::debug!(listener = %shared.name, client = %incoming.remote_address(), "QUIC handshake refused: max_handshakes in progress");
        shared.stats.quic.refused.fetch_add(1, Ordering::Relaxed);
        incoming.refuse();
        return;
    }
    let flood = in_progress >= s.max_handshakes / 2;
    if !incoming.remote_address_validated()
        && (s.retry == RetryMode::Always || flood)
        && incoming.may_retry()
    {
        if incoming.retry().is_ok() {
            shared.stats.quic.retry.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let peer = incoming.remote_address();
    let Some(admitted) = super::admission::admit(
        &shared.name,
        peer.ip(),
        &shared.services.runtime,
        &shared.admission,
    ) else {
        shared.stats.quic.refused.fetch_add(1, Ordering::Relaxed);
        incoming.refuse();
        return;
    };
    shared.handshaking.fetch_add(1, Ordering::Relaxed);
    let handshaking = Handshaking(shared.clone());
    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnectionGuard(shared.stats.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let _guard = guard;
        serve::connection(incoming, shared, handshaking).await
    });
}
