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

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use crate::proxy::downstream::Downstream;
use http::header::{ACCEPT_ENCODING, REFERER, USER_AGENT};
use http::{Request, Response};
use http_body::Body as _;

pub use crate::accesslog::Timing;

use crate::accesslog::Entry;
use crate::compress::{self, encoder::Encoder};
use crate::config::{Compress, Config, Encoding};
use crate::proxy::body::ProxyBody;
use crate::proxy::body_rate::RequestBytes;
use crate::proxy::{websocket, ConnContext};
use crate::runtime::{Backend, Snapshot};

/// Set by the proxy on a response from a backend: which one, after how many attempts.
#[derive(Debug, Clone)]
pub struct Served {
    pub backend: Arc<Backend>,
    pub tries: u32,
    pub timing: Timing,
}

thread_local! {
    /// Per worker: whether the config last seen has any `compress` (the `Weak` keeps its
    /// address from being reused, so a pointer comparison is exact).
    static ANY_COMPRESS: RefCell<Option<(Weak<Config>, bool)>> = const { RefCell::new(None) };
}

fn any_compress(config: &Arc<Config>) -> bool {
    ANY_COMPRESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some((seen, any)) = cell.as_ref() {
            if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(config)) {
                return *any;
            }
        }
        let any = config.pools.iter().any(|p| p.compress.is_some())
            || config.routes.iter().any(|r| r.compress.is_some());
        *cell = Some((Arc::downgrade(config), any));
        any
    })
}

/// The `compress` settings for a request to `host` and `path` on `listener`: the matching
/// route's, else its pool's.
fn compress_for<'a>(
    snapshot: &'a Snapshot,
    listener: usize,
    host: &str,
    path: &str,
) -> Option<&'a Compress> {
    let config = &snapshot.config;
    // Runtime routes are the config's, in order (validation guarantees their pools exist).
    if snapshot.routes.len() == config.routes.len() {
        if let Some(i) = snapshot.routes.first_match(host, path) {
            let route = &config.routes[i];
            return route.compress.as_ref().or_else(|| {
                config
                    .pools
                    .iter()
                    .find(|p| p.name == route.pool)
                    .and_then(|p| p.compress.as_ref())
            });
        }
    }
    let pool = snapshot.listeners.get(listener).and_then(|l| l.pool)?;
    config.pools.get(pool).and_then(|p| p.compress.as_ref())
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

/// Run `next` (the proxy) on `req`, with the request id, compression and access log.
pub async fn around<F, Fut>(
    mut req: Request<Downstream>,
    ctx: &ConnContext,
    next: F,
) -> Response<ProxyBody>
where
    F: FnOnce(Request<Downstream>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>>,
{
    let started = Instant::now();
    let snapshot = ctx.runtime.snapshot();
    let id = request_id::assign(req.headers_mut(), ctx.client.trusted);
    let logging = snapshot.config.access_log.is_some();
    let compressing = any_compress(&snapshot.config) && !websocket::is_upgrade(&req);
    if !logging && !compressing {
        drop(snapshot);
        let mut resp = next(req).await;
        resp.extensions_mut().remove::<Served>();
        request_id::echo(resp.headers_mut(), &id);
        return resp;
    }
    let authority = crate::proxy::authority(&req);
    let host = authority.as_ref().map_or("", crate::proxy::host_name);
    let path = req.uri().path();
    // Compression: the settings, and the coding this client accepts (if any).
    let compress = compressing
        .then(|| compress_for(&snapshot, ctx.listener, host, path))
        .flatten()
        .cloned();
    let coding = compress.as_ref().and_then(|c| {
        let accept = || req.headers().get_all(ACCEPT_ENCODING).iter();
        let best = compress::negotiate(accept(), &c.algorithms)?;
        let gzip_ok = c.algorithms.contains(&Encoding::Gzip)
            && compress::negotiate(accept(), &[Encoding::Gzip]).is_some();
        Some((best, gzip_ok))
    });
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
            pool: match req.extensions().get::<crate::proxy::normalize::Refused>() {
                Some(_) => None,
                None => snapshot.select_pool(ctx.listener, host, path),
            },
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
        },
        request_bytes: (!req.body().is_end_stream()).then(RequestBytes::default),
    });
    drop(snapshot);
    if let Some(counter) = head.as_ref().and_then(|h| h.request_bytes.clone()) {
        // The proxy counts the body's bytes into it as they arrive.
        req.extensions_mut().insert(counter);
    }
    let mut resp = next(req).await;
    request_id::echo(resp.headers_mut(), &id);
    let served = resp
        .extensions_mut()
        .remove::<Served>()
        .or_else(|| resp.body().served());
    let mut encoder = None;
    if let Some(c) = &compress {
        if compress::applies(c, &method, resp.status(), resp.headers()) {
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
