//! One QUIC connection: its handshake (0-RTT only with `early_data`), then HTTP/3 (h3):
//! each request stream becomes a `Request<Downstream>` for the listener's front and the
//! proxy (the same path as HTTP/1.1 and HTTP/2), and the response is written back to the
//! stream. A drain or a stopped listener sends GOAWAY: requests already taken finish, then
//! the connection closes.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{Response, StatusCode};
use http_body::Body;
use tokio::sync::watch;

use super::{Handshaking, Shared};
use crate::proxy::body::ProxyBody;
use crate::proxy::{local, ConnContext};
use crate::server::conn::front::{self, Front};
use crate::upstream::downstream::{Downstream, H3Body, StartError};

/// The longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After GOAWAY and the last response: how long the client may take to close the
/// connection itself (it then has every byte of its responses) before autolb closes it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// HTTP/3's "no error" application close code (RFC 9114 8.1).
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// What every request of a connection needs.
struct PerConnection {
    ctx: Arc<ConnContext>,
    front: Option<Arc<Front>>,
    /// The longest wait for the start of a request body of unknown length.
    body_wait: Duration,
    /// With 0-RTT: true once the handshake completed (unsafe methods wait for it).
    handshake: Option<watch::Receiver<bool>>,
}

/// Serve one admitted connection attempt until it ends.
pub(super) async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    handshaking: Handshaking,
) {
    let peer = incoming.remote_address();
    let Ok(connecting) = incoming.accept() else {
        shared.stats.quic.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let tls = shared.services.tls.listener(&shared.name);
    // With client certificates, no 0-RTT: the identity is checked before any request.
    let client_auth = tls.as_ref().is_some_and(|t| t.client_auth.enabled());
    let (conn, handshake) = if shared.settings.early_data && !client_auth {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let (done, handshake) = watch::channel(false);
                let stats = shared.stats.clone();
                let watched = conn.clone();
                tokio::spawn(async move {
                    // Resolves once the handshake is over; a failed one closed the
                    // connection.
                    let _ = accepted.await;
                    if watched.close_reason().is_some() {
                        stats.quic.failed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.quic.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(handshaking);
                    let _ = done.send(true);
                });
                (conn, Some(handshake))
            }
            Err(connecting) => match handshake(connecting, handshaking, &shared).await {
                Some(conn) => (conn, None),
                None => return,
            },
        }
    } else {
        match handshake(connecting, handshaking, &shared).await {
            Some(conn) => (conn, None),
            None => return,
        }
    };
    let mut client = None;
    if let Some(tls) = &tls {
        // quinn does not say whether the session was resumed: the chain is verified again
        // in every case (see `ClientAuthSlot::admit`).
        let chain = conn.peer_identity().and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        });
        match tls
            .client_auth
            .admit(chain.as_deref().map(Vec::as_slice), true)
        {
            Ok(identity) => client = identity,
            Err(refused) => {
                tracing::debug!(client = %peer, reason = %refused.0, "client certificate refused");
                tls.stats
                    .failure(crate::tls::metrics::Failure::ClientCertificate);
                conn.close(quinn::VarInt::from_u32(0x100 + 0x2a), b"client certificate");
                return;
            }
        }
        tls.stats.handshake(Some(rustls::ProtocolVersion::TLSv1_3));
    }
    let local = SocketAddr::new(
        conn.local_ip().unwrap_or(shared.local.ip()),
        shared.local.port(),
    );
    let addrs = tag_requests(&shared).then_some(crate::proxy_proto::ProxyAddrs {
        src: peer,
        dst: local,
    });
    let Some(setup) =
        crate::server::conn::setup(shared.services.clone(), &shared.name, peer, true, addrs, 0)
    else {
        conn.close(H3_NO_ERROR, b"");
        return;
    };
    let _ = setup.ctx.tls.set("TLSv1.3");
    if let Some(identity) = client {
        let _ = setup.ctx.client_cert.set(identity);
    }
    let limits = &setup.ctx.limits;
    let body_wait = limits
        .header_timeout
        .map_or(setup.idle, |t| t.min(setup.idle));
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_header_bytes as u64);
    let per = Arc::new(PerConnection {
        ctx: setup.ctx,
        front: setup.front,
        body_wait,
        handshake,
    });
    let h3conn = builder
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await;
    let mut h3conn = match h3conn {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut goaway = shared.goaway.subscribe();
    let mut draining = false;
    // The connection's requests: after GOAWAY, it closes once they all finished.
    let mut requests = tokio::task::JoinSet::new();
    loop {
        if !draining && *goaway.borrow_and_update() {
            draining = true;
            // GOAWAY: requests already taken finish, later streams are refused
            // (H3_REQUEST_REJECTED) by `accept`.
            if h3conn.shutdown(0).await.is_err() {
                break;
            }
        }
        if draining && requests.is_empty() {
            break;
        }
        tokio::select! {
            accepted = h3conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(request(resolver, per.clone()));
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(client = %peer, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = goaway.changed(), if !draining => {}
        }
    }
    // The client left or the connection failed: what it still asked for is dropped; after
    // a GOAWAY all was answered.
    requests.abort_all();
    drop(h3conn);
    // The client closes once it has its responses; else autolb does, shortly.
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.closed()).await;
    conn.close(H3_NO_ERROR, b"");
}

/// Whether some pool sends PROXY headers (requests then carry the connection's addresses).
fn tag_requests(shared: &Shared) -> bool {
    shared
        .services
        .runtime
        .snapshot()
        .config
        .pools
        .iter()
        .any(|p| p.send_proxy.is_some())
}

/// The handshake, bounded by `HANDSHAKE_TIMEOUT`.
async fn handshake(
    connecting: quinn::Connecting,
    handshaking: Handshaking,
    shared: &Shared,
) -> Option<quinn::Connection> {
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await;
    drop(handshaking);
    let counts = &shared.stats.quic;
    match result {
        Ok(Ok(conn)) => {
            counts.completed.fetch_add(1, Ordering::Relaxed);
            Some(conn)
        }
        Ok(Err(e)) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "QUIC handshake failed");
            None
        }
        Err(_) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One request stream: its head, its body, the proxy's answer written back.
async fn request(resolver: Resolver, per: Arc<PerConnection>) {
    let Ok((req, stream)) = resolver.resolve_request().await else {
        return;
    };
    let (mut send, recv) = stream.split();
    if let Some(handshake) = per.handshake.as_ref().filter(|_| !req.method().is_safe()) {
        // 0-RTT data can be replayed: an unsafe request is acted on only once the handshake
        // proved the client live.
        if handshake.clone().wait_for(|done| *done).await.is_err() {
            return;
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match H3Body::start(recv, declared, per.body_wait).await {
        Ok(body) => body,
        Err(StartError::Timeout) => {
            let resp = local::error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
                None,
            );
            return respond(&mut send, resp).await;
        }
        Err(StartError::Stream(_)) => return,
    };
    let req = req.map(|()| Downstream::H3(Box::new(body)));
    let resp = front::respond(req, per.ctx.clone(), per.front.clone()).await;
    respond(&mut send, resp).await
}

/// Write `resp` to the stream: its head (without HTTP/1 connection headers, which HTTP/3
/// forbids), its body as it comes, its trailers.
async fn respond(send: &mut SendStream, resp: Response<ProxyBody>) {
    let (mut parts, body) = resp.into_parts();
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    parts.version = http::Version::HTTP_3;
    if send
        .send_response(Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    let mut body = Box::pin(body);
    loop {
        let frame = poll_fn(|cx| Pin::as_mut(&mut body).poll_frame(cx)).await;
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed: HTTP/3 stream reset");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() && send.send_data(data).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    if send.send_trailers(trailers).await.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
    let _ = send.finish().await;
}
