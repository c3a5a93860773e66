//! New backend connections: TCP with a timeout, then TLS (rustls, SNI, mTLS, ALPN) when the
//! pool says `tls:`, then an HTTP/1.1 or HTTP/2 client handshake on hyper; and the settings
//! (`Upstream`) a pool's config gives its connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::h2_peer::{Peer, Tap};
use super::RequestBody;
use super::{Conn, UpstreamError};
use crate::config::{self, UpstreamProtocol, UpstreamTls};
use crate::tls::client;

/// HTTP/2 pings on idle backend connections, to notice dead ones before using them.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What identifies a pool's connection settings: the config, and the CA/client files' stamps
/// (so that a reload after rotating a client certificate rebuilds the TLS config).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Key {
    protocol: UpstreamProtocol,
    send_proxy: Option<config::ProxyVersion>,
    tls: Option<UpstreamTls>,
    stamps: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

impl Key {
    pub(super) fn of(cfg: &config::Pool) -> Key {
        let stamps = cfg
            .tls
            .iter()
            .flat_map(|t| [&t.ca, &t.client_cert, &t.client_key])
            .flatten()
            .map(|p| {
                let meta = std::fs::metadata(p).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                (p.clone(), modified, meta.map_or(0, |m| m.len()))
            })
            .collect();
        Key {
            protocol: cfg.protocol,
            send_proxy: cfg.send_proxy,
            tls: cfg.tls.clone(),
            stamps,
        }
    }
}

/// TLS towards one backend.
pub(super) struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// The connection settings of one backend, swapped whole when its pool's config changes.
pub(crate) struct Upstream {
    pub(super) key: Key,
    pub(super) protocol: UpstreamProtocol,
    pub(super) tls: Option<TlsTarget>,
    /// `send_proxy`: every connection starts with a PROXY header (and is never shared).
    pub(super) send_proxy: Option<config::ProxyVersion>,
    /// Bumped on every change: connections of an older generation are not reused.
    pub(super) generation: u64,
    /// The backend as configured: the HTTP/2 `:authority` of requests without a Host.
    authority: Option<String>,
}

impl Upstream {
    /// Plain HTTP/1.1 (what a backend starts with).
    pub(super) fn plain() -> Upstream {
        Upstream {
            key: Key::default(),
            protocol: UpstreamProtocol::H1,
            tls: None,
            send_proxy: None,
            generation: 0,
            authority: None,
        }
    }

    /// The settings `cfg` asks for, for the backend `address` (`addr`).
    pub(super) fn build(
        cfg: &config::Pool,
        key: Key,
        address: &str,
        addr: SocketAddr,
        generation: u64,
    ) -> Result<Upstream, client::ClientTlsError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(TlsTarget {
                connector: TlsConnector::from(client::client_config(t, cfg.protocol)?),
                name: client::server_name(t, address, addr),
            }),
        };
        Ok(Upstream {
            key,
            protocol: cfg.protocol,
            tls,
            send_proxy: cfg.send_proxy,
            generation,
            authority: Some(address.to_string()),
        })
    }

    fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// Open a connection to `addr` with `up`'s settings, within `timeout` (TCP, the PROXY
/// header of `send_proxy` for `client`, and TLS).
pub(super) async fn connect(
    up: &Upstream,
    addr: SocketAddr,
    timeout: Duration,
    client: Option<crate::proxy_proto::ProxyAddrs>,
) -> Result<(Conn, Option<Arc<Peer>>), UpstreamError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || UpstreamError::ConnectTimeout {
        addr,
        after: timeout,
    };
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    if let Some(version) = up.send_proxy {
        let header = crate::proxy_proto::encode(version, client);
        let write = tokio::io::AsyncWriteExt::write_all(&mut stream, &header);
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(())) => {}
        }
    }
    let Some(tls) = &up.tls else {
        tracing::debug!(backend = %addr, "new backend connection");
        return handshake(stream, up.protocol, addr).await;
    };
    let stream =
        match tokio::time::timeout_at(deadline, tls.connector.connect(tls.name.clone(), stream))
            .await
        {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => return Err(UpstreamError::Tls { addr, source }),
            Ok(Ok(s)) => s,
        };
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    // A backend that ignores ALPN gets the configured protocol; one that picks another
    // protocol than the one we asked for is refused.
    let expected: &[u8] = match up.protocol {
        UpstreamProtocol::H1 => b"http/1.1",
        UpstreamProtocol::H2 => b"h2",
    };
    if let Some(got) = alpn.filter(|p| p.as_slice() != expected) {
        return Err(UpstreamError::Alpn {
            addr,
            got: String::from_utf8_lossy(&got).into_owned(),
        });
    }
    tracing::debug!(backend = %addr, "new backend TLS connection");
    handshake(stream, up.protocol, addr).await
}

/// The HTTP/1.1 or HTTP/2 client handshake on `io`; an HTTP/2 connection comes with what
/// its backend allows (`Peer`, filled in as its SETTINGS are read).
async fn handshake<S>(
    io: S,
    protocol: UpstreamProtocol,
    addr: SocketAddr,
) -> Result<(Conn, Option<Arc<Peer>>), UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_err = |source| UpstreamError::Handshake { addr, source };
    match protocol {
        UpstreamProtocol::H1 => {
            let (tx, conn) = http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(backend = %addr, error = %e, "backend connection ended");
                }
            });
            Ok((Conn::H1(tx), None))
        }
        UpstreamProtocol::H2 => {
            let peer = Arc::new(Peer::default());
            let io = TokioIo::new(Tap::new(io, peer.clone()));
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(handshake_err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(backend = %addr, error = %e, "backend h2 connection ended");
                }
            });
            Ok((Conn::H2(tx), Some(peer)))
        }
    }
}

/// Shape a request for the connection it goes on: HTTP/2 wants an absolute URI (the Host
/// header becomes `:authority`); HTTP/1.1 origin-form with a Host header.
pub(super) fn prepare(req: &mut Request<RequestBody>, h2: bool, up: &Upstream, addr: SocketAddr) {
    if h2 {
        req.headers_mut().remove(CONNECTION);
        if req
            .extensions()
            .get::<super::hop_by_hop::TeTrailers>()
            .is_some()
        {
            // The one TE value HTTP/2 allows (gRPC servers refuse a call without it).
            req.headers_mut()
                .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        }
        if req.uri().scheme().is_some() && req.uri().authority().is_some() {
            *req.version_mut() = Version::HTTP_2;
            return;
        }
        let authority = req
            .headers_mut()
            .remove(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| {
                let fallback = up.authority.clone().unwrap_or_else(|| addr.to_string());
                Authority::try_from(fallback).ok()
            });
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(up.scheme());
        parts.authority = authority;
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Some(a) = req.uri().authority().cloned() {
            if !req.headers().contains_key(HOST) {
                if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(HOST, v);
                }
            }
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

/// Settings for `cfg`, or `None` when `current` already matches it. On a TLS error the
/// current settings stay (the error is logged; `autolb check` reports it with its line).
pub(super) fn reconfigure(
    current: &Arc<Upstream>,
    cfg: &config::Pool,
    address: &str,
    addr: SocketAddr,
) -> Option<Upstream> {
    let key = Key::of(cfg);
    if current.key == key {
        return None;
    }
    match Upstream::build(cfg, key, address, addr, current.generation + 1) {
        Ok(up) => Some(up),
        Err(e) => {
            tracing::error!(pool = %cfg.name, backend = %address, error = %e, "backend TLS settings not applied: keeping the previous ones");
            None
        }
    }
}
