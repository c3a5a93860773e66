//! RFC 9111 semantics for a shared cache: Cache-Control directives, whether a request may be
//! answered from the cache, whether a response may be stored, its freshness lifetime
//! (explicit, or heuristic only where the RFC allows it) and its age.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, PRAGMA};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// The Cache-Control directives autolb acts on (unknown ones are ignored, RFC 9111 5.2.3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// `no-cache`, with or without field names (treated alike: revalidate every time).
    pub no_cache: bool,
    /// `private`, with or without field names (a shared cache never stores it).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 5861 extensions, in seconds.
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Every Cache-Control field of `headers`, combined.
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                // A malformed delta-seconds makes the directive count as 0 (stale at once),
                // the safe reading.
                let secs = || Some(arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "max-age" => d.max_age = secs(),
                    "s-maxage" => d.s_maxage = secs(),
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// What a request allows the cache to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Not a GET or HEAD, or `Cache-Control: no-store`: straight to the backend.
    Bypass,
    /// May be answered from the cache; `reload`: the client asked for a validated answer
    /// (`no-cache`, `max-age=0`, `Pragma: no-cache`), so a stored one must go to the backend
    /// first.
    Lookup { reload: bool, authorized: bool },
}

/// RFC 9111 4 and 5.2.1 for `method` and the request's `headers`.
pub fn request(method: &Method, headers: &HeaderMap) -> RequestPolicy {
    if method != Method::GET && method != Method::HEAD {
        return RequestPolicy::Bypass;
    }
    let d = Directives::of(headers);
    if d.no_store {
        return RequestPolicy::Bypass;
    }
    let pragma = !headers.contains_key(CACHE_CONTROL)
        && headers.get_all(PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|p| p.to_ascii_lowercase().contains("no-cache"))
        });
    RequestPolicy::Lookup {
        reload: d.no_cache || d.max_age == Some(0) || pragma,
        authorized: headers.contains_key(AUTHORIZATION),
    }
}

/// Statuses cacheable by default, so heuristically (RFC 9110 15.1).
fn heuristic_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How a stored response may be used, decided when it is stored (and again when a 304
/// freshens it).
#[derive(Debug, Clone)]
pub struct Meta {
    /// When autolb received it (its clock, for the resident time).
    pub stored_at: tokio::time::Instant,
    /// Its age when received (`Age`, or how old its `Date` said it was).
    pub initial_age: Duration,
    /// Freshness lifetime (RFC 9111 4.2.1); zero: stale at once (revalidated every time).
    pub lifetime: Duration,
    /// Served stale at all (neither `must-revalidate`, `proxy-revalidate`, `s-maxage` nor
    /// `no-cache`), and for how long past its lifetime.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `no-cache`: every use is validated with the backend first.
    pub no_cache: bool,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<SystemTime>,
    /// May answer a request with `Authorization` (RFC 9111 3.5: `public`, `s-maxage` or
    /// `must-revalidate`).
    pub shared_auth: bool,
}

impl Meta {
    /// Its current age (RFC 9111 4.2.3).
    pub fn age(&self, now: tokio::time::Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Fresh now (and not `no-cache`).
    pub fn fresh(&self, now: tokio::time::Instant) -> bool {
        !self.no_cache && self.age(now) < self.lifetime
    }

    /// Stale by no more than `window`.
    pub fn stale_within(&self, now: tokio::time::Instant, window: Duration) -> bool {
        !window.is_zero() && self.age(now) < self.lifetime + window
    }

    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// Why a response is not stored (logged at debug level, and useful in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    Authorization,
    NoFreshness,
}

/// RFC 9111 3 for a response to a GET: `Ok(meta)` when a shared cache may store it.
/// autolb never shares a response that sets a cookie (one client's session would go to
/// every client).
pub fn storable(
    method: &Method,
    authorized: bool,
    status: StatusCode,
    headers: &HeaderMap,
    settings: &crate::config::Cache,
) -> Result<Meta, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    let explicit_only = matches!(status.as_u16(), 302 | 307);
    if !heuristic_status(status) && !explicit_only {
        return Err(NotStored::Status);
    }
    let d = Directives::of(headers);
    if d.no_store {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    if headers.contains_key(http::header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |s| s.split(',').any(|t| t.trim() == "*"))
    }) {
        return Err(NotStored::VaryStar);
    }
    let shared_auth = d.public || d.s_maxage.is_some() || d.must_revalidate;
    if authorized && !shared_auth {
        return Err(NotStored::Authorization);
    }
    let now = SystemTime::now();
    let date = http_date(headers.get(DATE)).filter(|d| *d <= now + Duration::from_secs(86_400));
    let last_modified = http_date(headers.get(LAST_MODIFIED));
    let etag = headers.get(ETAG).cloned();
    let explicit = if let Some(s) = d.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = d.max_age {
        Some(Duration::from_secs(m))
    } else if let Some(e) = headers.get(EXPIRES) {
        // An invalid Expires (such as "0") means already expired.
        let base = date.unwrap_or(now);
        Some(
            http_date(Some(e))
                .and_then(|e| e.duration_since(base).ok())
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let lifetime = match explicit {
        Some(l) => l,
        None if explicit_only || d.no_cache => Duration::ZERO,
        None if !heuristic_status(status) && !d.public => Duration::ZERO,
        None if !settings.default_ttl.is_zero() => settings.default_ttl,
        // RFC 9111 4.2.2: a fraction (10%) of the time since Last-Modified, capped at a day.
        None => match (last_modified, date.unwrap_or(now)) {
            (Some(lm), base) => base
                .duration_since(lm)
                .map(|d| (d / 10).min(Duration::from_secs(86_400)))
                .unwrap_or_default(),
            (None, _) => Duration::ZERO,
        },
    };
    let validators = etag.is_some() || last_modified.is_some();
    // Stored with no freshness only when the backend asked for revalidation and made it
    // possible (no-cache or max-age=0, with a validator).
    if lifetime.is_zero() && !(validators && (d.no_cache || explicit.is_some())) {
        return Err(NotStored::NoFreshness);
    }
    let serve_stale =
        !(d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some() || d.no_cache);
    let window = |own: Option<u64>, default: Duration| match serve_stale {
        false => Duration::ZERO,
        true => own.map_or(default, Duration::from_secs),
    };
    let age_header = headers
        .get(http::header::AGE)
        .and_then(|a| a.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = date
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    Ok(Meta {
        stored_at: tokio::time::Instant::now(),
        initial_age: age_header.max(apparent),
        lifetime,
        stale_while_revalidate: window(d.stale_while_revalidate, settings.stale_while_revalidate),
        stale_if_error: window(d.stale_if_error, settings.stale_if_error),
        no_cache: d.no_cache,
        etag,
        last_modified,
        shared_auth,
    })
}

/// An HTTP-date (IMF-fixdate, and the obsolete forms httpdate accepts).
pub fn http_date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn store(status: u16, pairs: &[(&str, &str)]) -> Result<Meta, NotStored> {
        storable(
            &Method::GET,
            false,
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            &crate::config::Cache::default(),
        )
    }

    #[test]
    fn s_maxage_wins_and_forbids_stale() {
        let m = store(200, &[("cache-control", "max-age=5, s-maxage=60")]).unwrap();
        assert_eq!(m.lifetime, Duration::from_secs(60));
        assert!(m.stale_while_revalidate.is_zero() && m.stale_if_error.is_zero());
        let m = store(200, &[("cache-control", "max-age=5")]).unwrap();
        assert_eq!(m.lifetime, Duration::from_secs(5));
        assert_eq!(m.stale_if_error, Duration::from_secs(60));
    }

    #[test]
    fn never_stored() {
        let cc = |v| store(200, &[("cache-control", v)]).unwrap_err();
        assert_eq!(cc("no-store, max-age=60"), NotStored::NoStore);
        assert_eq!(cc("private, max-age=60"), NotStored::Private);
        assert_eq!(
            store(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            )
            .unwrap_err(),
            NotStored::SetCookie
        );
        assert_eq!(
            store(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept, *")]
            )
            .unwrap_err(),
            NotStored::VaryStar
        );
        assert_eq!(store(200, &[]).unwrap_err(), NotStored::NoFreshness);
        assert_eq!(
            store(302, &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]).unwrap_err(),
            NotStored::NoFreshness
        );
        assert_eq!(
            store(500, &[("cache-control", "max-age=60")]).unwrap_err(),
            NotStored::Status
        );
        let auth = storable(
            &Method::GET,
            true,
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60")]),
            &crate::config::Cache::default(),
        );
        assert_eq!(auth.unwrap_err(), NotStored::Authorization);
    }

    #[test]
    fn expires_and_heuristics() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let m = store(200, &[("date", &date), ("expires", &later)]).unwrap();
        assert!(m.lifetime >= Duration::from_secs(99) && m.lifetime <= Duration::from_secs(100));
        // An invalid Expires is in the past: stored only with a validator, stale at once.
        assert_eq!(
            store(200, &[("expires", "0")]).unwrap_err(),
            NotStored::NoFreshness
        );
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let m = store(200, &[("date", &date), ("last-modified", &lm)]).unwrap();
        assert_eq!(m.lifetime.as_secs(), 100);
        // No-cache with a validator: stored, never fresh.
        let m = store(200, &[("cache-control", "no-cache"), ("etag", "\"x\"")]).unwrap();
        assert!(!m.fresh(tokio::time::Instant::now()));
    }

    #[test]
    fn requests() {
        let get = |pairs: &[(&str, &str)]| request(&Method::GET, &headers(pairs));
        assert_eq!(
            request(&Method::POST, &HeaderMap::new()),
            RequestPolicy::Bypass
        );
        assert_eq!(get(&[("cache-control", "no-store")]), RequestPolicy::Bypass);
        assert_eq!(
            get(&[("pragma", "no-cache")]),
            RequestPolicy::Lookup {
                reload: true,
                authorized: false
            }
        );
        assert_eq!(
            get(&[("authorization", "Bearer x")]),
            RequestPolicy::Lookup {
                reload: false,
                authorized: true
            }
        );
    }
}
