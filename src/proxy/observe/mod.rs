//! Around every proxied request: the `X-Request-Id` (generated, or kept from a trusted
//! proxy, passed to the backend and echoed to the client), response compression
//! (`compress:` of the route or pool) and the access log line, written when the response
//! body ends.
//!
//! A request that needs neither compression nor a log line costs a request id and no body
//! wrapper; otherwise the body is wrapped once (`body::ObservedBody`).

mod body;
pub mod request_id;

pub use body::ObservedBody;

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::upstream::downstream::Downstream;
use http::header::{ACCEPT_ENCODING, REFERER, USER_AGENT};
use http::{Request, Response};
use http_body::Body as _;

pub use crate::accesslog::Timing;

use crate::accesslog::Entry;
use crate::compress::{self, encoder::Encoder};
use crate::config::Encoding;
use crate::proxy::body::ProxyBody;
use crate::proxy::{websocket, ConnContext};
use crate::runtime::{Backend, Chosen, Snapshot};
use crate::upstream::client_body::RequestBytes;

/// Set by the proxy on a response from a backend: which one, after how many attempts.
#[derive(Debug, Clone)]
pub struct Served {
    pub backend: Arc<Backend>,
    pub tries: u32,
    pub timing: Timing,
}

/// A log line waiting for the end of its response body.
pub struct Pending {
    pub entry: Entry,
    pub started: Instant,
    pub request_bytes: Option<RequestBytes>,
}

/// What the log line needs from the request, taken before the proxy consumes it.
struct Head {
    started: Instant,
    entry: Entry,
    /// The request body's bytes, counted by the proxy as they arrive (a request with one).
    request_bytes: Option<RequestBytes>,
}

/// Run `next` (the proxy) on `req` with `snapshot`, with the request id, compression and
/// access log. `next` answers, and says where it routed the request (`None`: refused
/// before routing): compression and the log line follow that one choice.
pub async fn around<F, Fut>(
    mut req: Request<Downstream>,
    ctx: &ConnContext,
    snapshot: &Arc<Snapshot>,
    next: F,
) -> Response<ProxyBody>
where
    F: FnOnce(Request<Downstream>) -> Fut,
    Fut: Future<Output = (Response<ProxyBody>, Option<Chosen>)>,
{
    let started = Instant::now();
    let id = request_id::assign(req.headers_mut(), ctx.client.trusted);
    let logging = snapshot.config.access_log.is_some();
    let compressing = snapshot.any_compress && !websocket::is_upgrade(&req);
    if !logging && !compressing {
        let (mut resp, _) = next(req).await;
        resp.extensions_mut().remove::<Served>();
        request_id::echo(resp.headers_mut(), &id);
        return resp;
    }
    let authority = crate::proxy::authority(&req);
    // Compression: the codings this client accepts, chosen from once the route is known.
    // The first field on its own: the common single `Accept-Encoding` costs no allocation
    // (a clone shares the request's bytes); more fields are rare.
    let (accept_first, accept_more) = match compressing {
        true => {
            let mut fields = req.headers().get_all(ACCEPT_ENCODING).iter();
            (fields.next().cloned(), fields.cloned().collect())
        }
        false => (None, Vec::new()),
    };
    let accept = || accept_first.iter().chain(&accept_more);
    let method = req.method().clone();
    let head = logging.then(|| Head {
        started,
        entry: Entry {
            start: SystemTime::now(),
            duration: Default::default(),
            client: ctx.client.ip,
            method: method.clone(),
            host: authority.clone(),
            uri: req.uri().clone(),
            original: req
                .extensions()
                .get::<crate::proxy::normalize::Original>()
                .map(|o| o.0.clone()),
            version: req.version(),
            status: 0,
            bytes: 0,
            complete: false,
            pool: None,
            snapshot: snapshot.clone(),
            listener: ctx.listener,
            backend: None,
            tries: 0,
            tls: ctx.tls.get().copied(),
            request_id: id.clone(),
            user_agent: req.headers().get(USER_AGENT).cloned(),
            referer: req.headers().get(REFERER).cloned(),
            encoding: None,
            timing: None,
            request_bytes: 0,
            abort: None,
            grpc_status: None,
            cache: None,
            client_cert: ctx.client_cert.get().cloned(),
        },
        request_bytes: (!req.body().is_end_stream()).then(RequestBytes::default),
    });
    if let Some(counter) = head.as_ref().and_then(|h| h.request_bytes.clone()) {
        // The proxy counts the body's bytes into it as they arrive.
        req.extensions_mut().insert(counter);
    }
    let (mut resp, chosen) = next(req).await;
    request_id::echo(resp.headers_mut(), &id);
    let served = resp
        .extensions_mut()
        .remove::<Served>()
        .or_else(|| resp.body().served());
    let mut encoder = None;
    let compress = chosen
        .filter(|_| compressing)
        .and_then(|c| snapshot.compress(c));
    if let Some(c) = compress {
        if compress::applies(c, &method, resp.status(), resp.headers()) {
            let coding = compress::negotiate(accept(), &c.algorithms).map(|best| {
                let gzip_ok = c.algorithms.contains(&Encoding::Gzip)
                    && compress::negotiate(accept(), &[Encoding::Gzip]).is_some();
                (best, gzip_ok)
            });
            compress::add_vary(resp.headers_mut());
            if let Some((best, gzip_ok)) = coding {
                let size = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let enc = compress::choose(best, gzip_ok, size);
                compress::rewrite_headers(resp.headers_mut(), enc);
                encoder = Some((enc, Encoder::new(enc, c.level, size)));
            }
        }
    }
    let log = head.map(|mut h| {
        h.entry.status = resp.status().as_u16();
        h.entry.pool = chosen.map(|c| c.pool);
        h.entry.grpc_status = crate::proxy::grpc::status_in(resp.headers());
        h.entry.encoding = encoder.as_ref().map(|(e, _)| e.token());
        h.entry.cache = resp
            .extensions()
            .get::<crate::cache::Outcome>()
            .map(|o| o.label());
        if let Some(s) = served {
            h.entry.tries = s.tries;
            h.entry.backend = Some(s.backend);
            h.entry.timing = Some(s.timing);
        }
        Box::new(Pending {
            entry: h.entry,
            started: h.started,
            request_bytes: h.request_bytes,
        })
    });
    if encoder.is_none() && log.is_none() {
        return resp;
    }
    resp.map(|inner| {
        ProxyBody::Observed(Box::new(ObservedBody::new(
            inner,
            encoder.map(|(_, e)| e),
            log,
        )))
    })
}
