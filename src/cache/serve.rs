//! Answers made from a stored response: with its current `Age`, the client's conditionals
//! (`If-None-Match`, `If-Modified-Since` -> 304), HEAD (the head of a stored GET) and a
//! single byte range (206, or 416 when it cannot be satisfied).

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderValue, AGE, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, RANGE,
};
use http::{HeaderMap, Method, StatusCode};

use super::policy::http_date;
use super::store::Object;

/// A response head and body the proxy turns into its own response type.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// Fields a 304 carries (RFC 9110 15.4.5), besides `Age`.
const NOT_MODIFIED_FIELDS: [&str; 7] = [
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
];

/// `object` as the answer to a request with `method` and `request` fields.
pub fn answer(object: &Object, method: &Method, request: &HeaderMap) -> Answer {
    let now = tokio::time::Instant::now();
    let age = HeaderValue::from(object.meta.age(now).as_secs());
    if object.status == StatusCode::OK && not_modified(object, request) {
        let mut headers = HeaderMap::new();
        for name in NOT_MODIFIED_FIELDS {
            for v in object.headers.get_all(name) {
                headers.append(name, v.clone());
            }
        }
        headers.insert(AGE, age);
        return Answer {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: None,
        };
    }
    let mut headers = object.headers.clone();
    headers.insert(AGE, age);
    let mut status = object.status;
    let mut body = object.body.clone();
    if object.status == StatusCode::OK && range_applies(object, request) {
        if let Some(spec) = request.get(RANGE).and_then(|r| r.to_str().ok()) {
            let len = body.len() as u64;
            match byte_range(spec, len) {
                Range::One(first, last) => {
                    status = StatusCode::PARTIAL_CONTENT;
                    body = body.slice(first as usize..=last as usize);
                    headers.insert(
                        CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                            .unwrap_or(HeaderValue::from_static("bytes */0")),
                    );
                }
                Range::Unsatisfiable => {
                    headers.insert(
                        CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{len}"))
                            .unwrap_or(HeaderValue::from_static("bytes */0")),
                    );
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
                    return Answer {
                        status: StatusCode::RANGE_NOT_SATISFIABLE,
                        headers,
                        body: None,
                    };
                }
                Range::Whole => {}
            }
        }
    }
    if status != StatusCode::NO_CONTENT {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len() as u64));
    }
    Answer {
        status,
        headers,
        body: (method != Method::HEAD && !body.is_empty()).then_some(body),
    }
}

/// RFC 9110 13.1.2 and 13.1.3 (If-None-Match wins; weak comparison).
fn not_modified(object: &Object, request: &HeaderMap) -> bool {
    let inm: Vec<&HeaderValue> = request.get_all(IF_NONE_MATCH).iter().collect();
    if !inm.is_empty() {
        let Some(etag) = object.headers.get(ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let ours = weak(etag);
        return inm
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == ours);
    }
    let since = http_date(request.get(IF_MODIFIED_SINCE));
    let modified = object
        .meta
        .last_modified
        .or_else(|| http_date(object.headers.get(http::header::DATE)));
    match (since, modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// A Range applies unless an If-Range names another representation (RFC 9110 13.1.5:
/// a strong ETag or the exact Last-Modified date).
fn range_applies(object: &Object, request: &HeaderMap) -> bool {
    let Some(if_range) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let if_range = if_range.trim();
    if if_range.starts_with('"') {
        return object
            .headers
            .get(ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| e == if_range);
    }
    let date: Option<SystemTime> = httpdate::parse_http_date(if_range).ok();
    date.is_some() && date == object.meta.last_modified
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Serve the whole representation (no valid single range: several, or not bytes).
    Whole,
    One(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range over `len` bytes (RFC 9110 14.1.2).
fn byte_range(spec: &str, len: u64) -> Range {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if set.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return Range::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // Suffix: the last b bytes.
        (true, false) => match parse(b) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if len > 0 => Range::One(len.saturating_sub(n), len - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (false, _) => {
            let Some(first) = parse(a) else {
                return Range::Whole;
            };
            let last = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match last {
                None => Range::Whole,
                Some(last) if last < first => Range::Whole,
                Some(_) if first >= len => Range::Unsatisfiable,
                Some(last) => Range::One(first, last.min(len - 1)),
            }
        }
        (true, true) => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-4", 10), Range::One(0, 4));
        assert_eq!(byte_range("bytes=5-", 10), Range::One(5, 9));
        assert_eq!(byte_range("bytes=-3", 10), Range::One(7, 9));
        assert_eq!(byte_range("bytes=-30", 10), Range::One(0, 9));
        assert_eq!(byte_range("bytes=8-100", 10), Range::One(8, 9));
        assert_eq!(byte_range("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,4-5", 10), Range::Whole);
        assert_eq!(byte_range("items=0-1", 10), Range::Whole);
        assert_eq!(byte_range("bytes=5-2", 10), Range::Whole);
    }
}
