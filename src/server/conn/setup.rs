//! The proxy's per-connection context and the listener's front for a new client
//! connection (TCP or QUIC).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::front::Front;
use crate::proxy::{headers::ClientInfo, ConnContext};

/// What a connection of a listener is served with.
pub(crate) struct Setup {
    pub ctx: Arc<ConnContext>,
    pub front: Option<Arc<Front>>,
    /// The listener's `idle_timeout`.
    pub idle: Duration,
    pub h2c: bool,
}

/// The proxy's context and the listener's front for a connection from `peer` to listener
/// `listener_name` (over TLS or QUIC when `https`) on `port`; `None` if the listener is gone.
pub(crate) fn setup(
    services: crate::server::Services,
    listener_name: &str,
    peer: SocketAddr,
    https: bool,
    addrs: Option<crate::proxy_proto::ProxyAddrs>,
    port: u16,
) -> Option<Setup> {
    let crate::server::Services {
        runtime,
        shared,
        acme,
        tls: _,
    } = services;
    let snapshot = runtime.snapshot();
    let listener = snapshot.listener(listener_name)?;
    let info = &snapshot.listeners[listener];
    let idle = info.idle_timeout;
    let trusted = info.trusts(peer.ip());
    let normalize = info.normalize.clone();
    let h2c = info.h2c;
    // Runtime listeners are the config's, in order.
    let front = Front::of(
        snapshot.config.listeners.get(listener),
        https,
        port,
        acme.filter(|_| !https),
    );
    let limits = info.limits.clone();
    let rate_limit = info.rate_limit.clone();
    drop(snapshot);
    let proto = if https { "https" } else { "http" };
    let ctx = Arc::new(ConnContext {
        runtime,
        shared,
        listener,
        client: ClientInfo::new(peer.ip(), proto, trusted),
        addrs,
        tls: Default::default(),
        client_cert: Default::default(),
        limits,
        rate_limit,
        normalize,
        interim: Default::default(),
    });
    Some(Setup {
        ctx,
        front,
        idle,
        h2c,
    })
}
