//! One client connection: HTTP/1.1 with keep-alive on hyper, served until the client leaves,
//! the idle timeout passes, or a graceful shutdown asks it to finish its current request.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::listener::ConnectionGuard;
use crate::proxy::{self, headers::ClientInfo, ConnContext};
use crate::runtime::Runtime;

pub(crate) async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    runtime: Arc<Runtime>,
    listener_name: String,
    mut shutdown: watch::Receiver<bool>,
    _guard: ConnectionGuard,
) {
    let _ = stream.set_nodelay(true);
    let snapshot = runtime.snapshot();
    let Some(listener) = snapshot.listener(&listener_name) else {
        return;
    };
    let info = &snapshot.listeners[listener];
    let idle = info.idle_timeout;
    let client = ClientInfo::new(peer.ip(), "http", info.trusts(peer.ip()));
    drop(snapshot);
    let ctx = Arc::new(ConnContext {
        runtime,
        listener,
        client,
    });
    let service = service_fn(move |req| proxy::handle(req, ctx.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "client connection ended");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
