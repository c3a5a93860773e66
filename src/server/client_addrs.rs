//! An HTTP or HTTPS connection's client addresses, found before anything else is read
//! (`proxy_proto::client_addrs` under the listener's settings of the current snapshot), and
//! whether its requests must carry them (some pool sends PROXY headers).

use std::net::SocketAddr;

use crate::proxy_proto::client_addrs::{client_addrs, own_addrs, ClientSocket, Refused};
use crate::proxy_proto::ProxyAddrs;
use crate::runtime::Runtime;

/// A connection accepted by an http or https listener, PROXY header read if it asked.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub addrs: ProxyAddrs,
    /// Some pool writes PROXY headers: requests should carry `addrs` (as an extension).
    pub tag_requests: bool,
}

/// For http and https listeners, before anything else is read: the client's addresses.
pub async fn accept<S: ClientSocket>(
    runtime: &Runtime,
    listener: &str,
    stream: &mut S,
    peer: SocketAddr,
) -> Option<Accepted> {
    let (accept_proxy, tag_requests, counters) = {
        let snap = runtime.snapshot();
        let info = snap
            .listener(listener)
            .and_then(|i| snap.listeners.get(i))?;
        (info.accept_proxy, snap.any_send_proxy, info.tcp.clone())
    };
    let addrs = match client_addrs(accept_proxy, tag_requests, listener, stream, peer).await {
        Ok(addrs) => addrs,
        Err(Refused::Header) => {
            counters.reject("bad_proxy_header");
            return None;
        }
        Err(Refused::Socket) => return None,
    };
    Some(Accepted {
        addrs,
        tag_requests,
    })
}

/// `accept` without a wait, when the listener `listener` reads no PROXY header; `None`
/// when it does (or is gone): then `accept`.
pub fn accept_at_once<S: ClientSocket>(
    runtime: &Runtime,
    listener: &str,
    stream: &S,
    peer: SocketAddr,
) -> Option<Accepted> {
    let snap = runtime.snapshot();
    let info = snap
        .listener(listener)
        .and_then(|i| snap.listeners.get(i))?;
    if info.accept_proxy {
        return None;
    }
    let tag_requests = snap.any_send_proxy;
    Some(Accepted {
        addrs: own_addrs(tag_requests, stream, peer),
        tag_requests,
    })
}
