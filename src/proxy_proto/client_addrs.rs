//! A fresh client connection's addresses, before anything else is read from it: its
//! socket's own, or (`accept_proxy: true`) those its PROXY header names. HTTP listeners
//! (`server::client_addrs`) and TCP listeners (`l4`) alike.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{read_header, ProxyAddrs};

/// The longest a client may take to send its PROXY header (or, on a TCP listener with
/// `sni_routes`, its ClientHello).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client socket whose addresses `client_addrs` finds: HTTP listeners hand theirs over before
/// it is registered with tokio's reactor, which only a PROXY header's read needs.
pub trait ClientSocket {
    /// The socket's own address (a `getsockname`).
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
    /// The socket as a tokio stream (registered with the reactor).
    fn registered(&mut self) -> std::io::Result<&mut TcpStream>;
}

impl ClientSocket for TcpStream {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn registered(&mut self) -> std::io::Result<&mut TcpStream> {
        Ok(self)
    }
}

/// A connection's addresses as its socket gives them: the peer, and its own local address
/// only when `need_dst` (a PROXY header we send uses it; a `getsockname`), else the peer's.
pub fn own_addrs<S: ClientSocket>(need_dst: bool, stream: &S, peer: SocketAddr) -> ProxyAddrs {
    let dst = match need_dst {
        true => stream.local_addr().unwrap_or(peer),
        false => peer,
    };
    ProxyAddrs { src: peer, dst }
}

/// Why a connection's addresses are unknown (logged): close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The socket could not be registered to read the header.
    Socket,
    /// The PROXY header is missing, malformed or late (the listener counts
    /// `bad_proxy_header`).
    Header,
}

/// The addresses of a connection: its own (`own_addrs`), or (`accept_proxy: true`) those
/// of its PROXY header.
pub async fn client_addrs<S: ClientSocket>(
    accept_proxy: bool,
    need_dst: bool,
    listener: &str,
    stream: &mut S,
    peer: SocketAddr,
) -> Result<ProxyAddrs, Refused> {
    let own = own_addrs(need_dst, stream, peer);
    if !accept_proxy {
        return Ok(own);
    }
    let stream = match stream.registered() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(listener = %listener, client = %peer, error = %e, "cannot read a PROXY header: connection closed");
            return Err(Refused::Socket);
        }
    };
    match read_header(stream, HEADER_TIMEOUT).await {
        Ok(addrs) => Ok(addrs.unwrap_or(own)),
        Err(e) => {
            tracing::warn!(listener = %listener, client = %peer, error = %e, "PROXY protocol header refused: connection closed");
            Err(Refused::Header)
        }
    }
}
