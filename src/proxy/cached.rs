//! The proxy's side of the HTTP cache (`crate::cache`): a request is looked up before it
//! is admitted to its pool (a hit never takes a slot nor touches a backend), and a miss is
//! forwarded as any other request, its answer handed to the cache.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Request, Response};

use super::body::ProxyBody;
use super::forward::{self, Plan};
use super::ConnContext;
use crate::cache::{self, serve::Answer, Begin, Cache, Completed, Outcome, Pending};
use crate::runtime::events::EventLog;
use crate::runtime::Pool;
use crate::upstream::client_body::ClientBody;

/// A request on its way to the backend through a cache.
pub struct Through {
    cache: Arc<Cache>,
    pending: Box<Pending>,
}

/// Answer `req` from `cache`, or say how it goes to the backend.
pub(super) async fn begin(
    cache: &Arc<Cache>,
    req: &Request<crate::upstream::downstream::Downstream>,
    ctx: &ConnContext,
    authority: Option<&HeaderValue>,
    pool: &Pool,
) -> Result<Response<ProxyBody>, Through> {
    let authority = authority.and_then(|a| a.to_str().ok()).unwrap_or("");
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let https = super::client_https(req.headers(), ctx);
    let wait = pool.timeouts.response;
    match cache::begin(
        cache,
        req.method(),
        req.headers(),
        https,
        authority,
        pq,
        wait,
    )
    .await
    {
        Begin::Answer(answer, outcome) => Ok(respond(cache, answer, outcome)),
        Begin::Go(pending) => Err(Through {
            cache: cache.clone(),
            pending,
        }),
    }
}

/// Forward a request that went `through` the cache, and hand the answer to it.
pub(super) async fn forward(
    through: Through,
    mut parts: Parts,
    body: ClientBody,
    pool: &Arc<Pool>,
    plan: Plan<'_>,
    events: &Arc<EventLog>,
) -> Response<ProxyBody> {
    let Through { cache, pending } = through;
    pending.prepare(&mut parts.headers);
    if pending.background() {
        if let Some(stale) = pending.stale_answer() {
            let (pool, events, plan) = (pool.clone(), events.clone(), plan.detached());
            tokio::spawn(async move {
                let resp = forward::forward(parts, body, &pool, plan, &events).await;
                if let Completed::Stored(resp) = pending.complete(resp) {
                    cache::tee::drain(resp.into_body(), pool.timeouts.request_total).await;
                }
            });
            return respond(&cache, stale, Outcome::Stale);
        }
    }
    let resp = forward::forward(parts, body, pool, plan, events).await;
    let (mut resp, outcome) = match pending.complete(resp) {
        Completed::Forward(resp, outcome) => (resp, outcome),
        Completed::Stored(resp) => {
            let (parts, body) = resp.into_parts();
            let body = ProxyBody::Cached(Box::new(body));
            (Response::from_parts(parts, body), Outcome::Miss)
        }
        Completed::Answer(answer, outcome) => return respond(&cache, answer, outcome),
    };
    mark(&cache, &mut resp, outcome);
    resp
}

fn respond(cache: &Cache, answer: Answer, outcome: Outcome) -> Response<ProxyBody> {
    let body = answer.body.map_or_else(ProxyBody::empty, ProxyBody::full);
    let mut resp = Response::new(body);
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    mark(cache, &mut resp, outcome);
    resp
}

fn mark(cache: &Cache, resp: &mut Response<ProxyBody>, outcome: Outcome) {
    cache.count(outcome);
    if cache.settings.x_cache {
        cache::flow::mark(resp.headers_mut(), outcome);
    }
    resp.extensions_mut().insert(outcome);
}
