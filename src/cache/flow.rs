//! The cache's decisions around one request: answer from the store (`begin`), or go to the
//! backend (coalesced, conditional when a stored response can be validated, or in the
//! background while a stale one is served) and decide what to do with its answer
//! (`Pending::complete`: store it, freshen the stored one after a 304, or serve the stale
//! one when the backend failed).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;

use super::flight::{self, Flight, Flights, Joined};
use super::key::Primary;
use super::policy::{self, RequestPolicy};
use super::serve::{self, Answer};
use super::store::Object;
use super::tee::{Fill, Tee};
use super::{Cache, Outcome};

/// What the cache makes of a request before it reaches the pool.
pub enum Begin {
    /// Answered from the store.
    Answer(Answer, Outcome),
    /// To the backend.
    Go(Box<Pending>),
}

/// Why the request goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not cacheable; `invalidate`: an unsafe method, whose success makes the stored
    /// responses of its URL stale.
    Bypass { invalidate: bool },
    /// Nothing usable stored; `store`: the answer may be stored (a GET without Range).
    Miss { store: bool },
    /// A stored response to validate (conditional request when it has validators).
    Revalidate,
    /// A stale stored response is served now; the request refreshes it in the background.
    Background,
}

/// A request on its way to the backend, and what the cache will do with the answer.
pub struct Pending {
    cache: Arc<Cache>,
    primary: Option<Primary>,
    method: Method,
    /// The client's fields (for `Vary` and its conditionals).
    request: HeaderMap,
    authorized: bool,
    stored: Option<Arc<Object>>,
    mode: Mode,
    flight: Option<Flight>,
}

/// What becomes of the backend's answer.
pub enum Completed<B> {
    /// Passed through as it is.
    Forward(Response<B>, Outcome),
    /// Passed through and stored as it streams.
    Stored(Response<Tee<B>>),
    /// Answered from the store instead (validated, or stale after a failure).
    Answer(Answer, Outcome),
}

/// Look `method` `https://authority/path_and_query` up in `cache`; concurrent misses wait
/// for the first one at most `wait`.
pub async fn begin(
    cache: &Arc<Cache>,
    method: &Method,
    request: &HeaderMap,
    https: bool,
    authority: &str,
    path_and_query: &str,
    wait: Duration,
) -> Begin {
    let pending = |primary, mode, stored, authorized, flight| {
        Begin::Go(Box::new(Pending {
            cache: cache.clone(),
            primary,
            method: method.clone(),
            request: request.clone(),
            authorized,
            stored,
            mode,
            flight,
        }))
    };
    let (reload, authorized) = match policy::request(method, request) {
        RequestPolicy::Lookup { reload, authorized } => (reload, authorized),
        RequestPolicy::Bypass => {
            let invalidate = !method.is_safe();
            let primary = invalidate.then(|| Primary::new(https, authority, path_and_query));
            return pending(primary, Mode::Bypass { invalidate }, None, false, None);
        }
    };
    let primary = Primary::new(https, authority, path_and_query);
    let storing = method == Method::GET && !request.contains_key(RANGE);
    let mut waited = false;
    loop {
        let now = tokio::time::Instant::now();
        let stored = cache
            .store
            .get(&primary.key, request)
            .filter(|o| !authorized || o.meta.shared_auth);
        if let Some(o) = &stored {
            if !reload && o.meta.fresh(now) {
                return Begin::Answer(serve::answer(o, method, request), Outcome::Hit);
            }
            if !reload && o.meta.stale_within(now, o.meta.stale_while_revalidate) {
                return match Flights::join(cache, &primary.key) {
                    Joined::Lead(f) => {
                        pending(Some(primary), Mode::Background, stored, authorized, Some(f))
                    }
                    // Someone refreshes it already.
                    Joined::Wait(_) => {
                        Begin::Answer(serve::answer(o, method, request), Outcome::Stale)
                    }
                };
            }
        }
        let mode = match &stored {
            Some(_) if storing => Mode::Revalidate,
            _ => Mode::Miss { store: storing },
        };
        if !storing || waited {
            return pending(Some(primary), mode, stored, authorized, None);
        }
        match Flights::join(cache, &primary.key) {
            Joined::Lead(f) => return pending(Some(primary), mode, stored, authorized, Some(f)),
            Joined::Wait(rx) => {
                flight::wait(rx, wait).await;
                waited = true;
            }
        }
    }
}

/// Status codes after which a stale response may be served instead (RFC 5861 4).
fn failed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Fields a 304 does not update in the stored response (RFC 9111 3.2).
const KEEP_ON_304: [http::HeaderName; 3] = [
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
    http::header::CONTENT_ENCODING,
];

impl Pending {
    /// A stale response is served now and the backend's answer is awaited in the
    /// background.
    pub fn background(&self) -> bool {
        self.mode == Mode::Background
    }

    /// The stale answer of a background refresh.
    pub fn stale_answer(&self) -> Option<Answer> {
        let o = self.stored.as_ref()?;
        Some(serve::answer(o, &self.method, &self.request))
    }

    /// Fit the request to the backend for the cache: the client's own conditionals are
    /// the cache's to answer, and a stored response is validated with its validators.
    pub fn prepare(&self, headers: &mut HeaderMap) {
        if !matches!(
            self.mode,
            Mode::Miss { store: true } | Mode::Revalidate | Mode::Background
        ) {
            return;
        }
        headers.remove(IF_NONE_MATCH);
        headers.remove(IF_MODIFIED_SINCE);
        if let Some(o) = &self.stored {
            if let Some(etag) = &o.meta.etag {
                headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = o.headers.get(http::header::LAST_MODIFIED) {
                headers.insert(IF_MODIFIED_SINCE, lm.clone());
            }
        }
    }

    /// What to do with the backend's `resp`.
    pub fn complete<B: Body>(mut self, resp: Response<B>) -> Completed<B> {
        let status = resp.status();
        let cache = self.cache.clone();
        let Some(primary) = self.primary.take() else {
            return Completed::Forward(resp, Outcome::Bypass);
        };
        if let Mode::Bypass { invalidate } = self.mode {
            if invalidate && (status.is_success() || status.is_redirection()) {
                cache.store.remove(&primary.key);
            }
            return Completed::Forward(resp, Outcome::Bypass);
        }
        let stored = self.stored.take();
        if let (StatusCode::NOT_MODIFIED, Some(o)) = (status, &stored) {
            return self.freshen(primary, o, resp.headers());
        }
        if let Some(o) = &stored {
            let window = o.meta.stale_if_error;
            if failed(status) && o.meta.stale_within(tokio::time::Instant::now(), window) {
                return Completed::Answer(
                    serve::answer(o, &self.method, &self.request),
                    Outcome::Stale,
                );
            }
        }
        let outcome = match self.mode {
            Mode::Background => Outcome::Stale,
            _ => Outcome::Miss,
        };
        if matches!(self.mode, Mode::Miss { store: false }) {
            return Completed::Forward(resp, outcome);
        }
        let meta = policy::storable(
            &Method::GET,
            self.authorized,
            status,
            resp.headers(),
            &cache.settings,
        );
        let meta = match meta {
            Ok(m) => m,
            Err(why) => {
                tracing::debug!(key = %primary.key, ?why, "response not stored");
                if let Some(o) = &stored {
                    cache.store.remove_variant(&primary, o);
                }
                return Completed::Forward(resp, outcome);
            }
        };
        let too_large = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > cache.settings.max_object);
        if too_large {
            return Completed::Forward(resp, outcome);
        }
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers.clone();
        headers.remove(TRANSFER_ENCODING);
        headers.remove(http::header::CONNECTION);
        let fill = Fill {
            cache,
            primary,
            status,
            headers,
            meta,
            request: std::mem::take(&mut self.request),
            body: BytesMut::new(),
            flight: self.flight.take(),
        };
        Completed::Stored(Response::from_parts(parts, Tee::new(body, fill)))
    }

    /// A 304 to the cache's conditional request: the stored response, its fields updated
    /// (RFC 9111 4.3.4), answers.
    fn freshen<B>(self, primary: Primary, o: &Arc<Object>, fresh: &HeaderMap) -> Completed<B> {
        let mut headers = o.headers.clone();
        for name in fresh.keys() {
            if KEEP_ON_304.contains(name) {
                continue;
            }
            headers.remove(name);
            for v in fresh.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let cache = &self.cache;
        let object = match policy::storable(
            &Method::GET,
            self.authorized,
            o.status,
            &headers,
            &cache.settings,
        ) {
            Ok(meta) => {
                let object =
                    super::store::object(o.status, headers, o.body.clone(), meta, &self.request);
                let object = Arc::new(object);
                cache.store.insert(&primary, object.clone());
                object
            }
            Err(_) => {
                cache.store.remove_variant(&primary, o);
                o.clone()
            }
        };
        let outcome = match self.mode {
            Mode::Background => Outcome::Stale,
            _ => Outcome::Hit,
        };
        Completed::Answer(serve::answer(&object, &self.method, &self.request), outcome)
    }
}

/// `X-Cache: outcome` on `headers`.
pub fn mark(headers: &mut HeaderMap, outcome: Outcome) {
    headers.insert("x-cache", HeaderValue::from_static(outcome.header()));
}
