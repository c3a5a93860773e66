//! Response compression (`compress:` of a pool or route): which coding a client accepts
//! (`Accept-Encoding`, with q-values), whether a response may be compressed at all, the
//! header changes that go with it, and the streaming encoders (`encoder`).
//!
//! Never compressed: responses to HEAD, 1xx/204/304/206 answers, upgrades (WebSocket),
//! responses that already have a `Content-Encoding`, carry `Cache-Control: no-transform`,
//! or a `Content-Range`, types not in `types`, and those announcing a `Content-Length`
//! below `min_size`.

pub mod encoder;
mod pool;

use http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderMap, Method, StatusCode};

use crate::config::{Compress, Encoding};

/// The coding to use for a client sending `accept` (its `Accept-Encoding` values), among
/// `offered` (autolb's order of preference breaks ties); `None`: send it as it is.
pub fn negotiate<'a>(
    accept: impl Iterator<Item = &'a HeaderValue>,
    offered: &[Encoding],
) -> Option<Encoding> {
    // q of each offered coding as the client gives it (explicitly or through `*`).
    let mut explicit: Vec<(Encoding, f32)> = Vec::new();
    let mut star: Option<f32> = None;
    let mut any = false;
    for v in accept {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            any = true;
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match token.as_str() {
                "*" => star = Some(q),
                "br" => explicit.push((Encoding::Brotli, q)),
                "gzip" | "x-gzip" => explicit.push((Encoding::Gzip, q)),
                _ => {}
            }
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Encoding, f32)> = None;
    for &enc in offered {
        let q = explicit
            .iter()
            .filter(|(e, _)| *e == enc)
            .map(|(_, q)| *q)
            .next()
            .or(star)
            .unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((enc, q));
        }
    }
    best.map(|(e, _)| e)
}

/// Below this size (a known `Content-Length`) brotli's set-up costs more CPU than its
/// better ratio saves bytes: gzip is used instead when the client accepts it.
pub const BROTLI_MIN_SIZE: u64 = 16 * 1024;

/// The coding for a body of `size` bytes: the negotiated one, except brotli for a small
/// body when the client also accepts gzip (`gzip_ok`).
pub fn choose(negotiated: Encoding, gzip_ok: bool, size: Option<u64>) -> Encoding {
    match (negotiated, size) {
        (Encoding::Brotli, Some(n)) if n < BROTLI_MIN_SIZE && gzip_ok => Encoding::Gzip,
        (e, _) => e,
    }
}

/// Whether a response (`status`, `headers`) to a `method` request may be compressed by `c`.
pub fn applies(c: &Compress, method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(CONTENT_RANGE)
    {
        return false;
    }
    if headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    let no_transform = headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if no_transform {
        return false;
    }
    let typed = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| c.matches_type(t));
    if !typed {
        return false;
    }
    match headers.get(CONTENT_LENGTH) {
        Some(len) => len
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l >= c.min_size.max(1)),
        None => true,
    }
}

/// The header changes of a response compressed with `enc`: `Content-Encoding`, no
/// `Content-Length` (the body is streamed), no `Accept-Ranges`, `Vary: Accept-Encoding`, and
/// a strong `ETag` made weak (the bytes differ from the identity representation's).
pub fn rewrite_headers(headers: &mut HeaderMap, enc: Encoding) {
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(enc.token()));
    add_vary(headers);
    if let Some(etag) = headers.get(ETAG) {
        if etag.as_bytes().first() == Some(&b'"') {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(ETAG, v);
            }
        }
    }
}

/// `Vary: Accept-Encoding` on every response a `compress` setting could have compressed,
/// whether or not this one was (caches must not serve a gzip body to another client).
pub fn add_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests;
