//! gRPC calls through the proxy: telling a call from other HTTP (`content-type:
//! application/grpc`), its deadline (`grpc-timeout`), the wait for a backend's answer while
//! the client's stream still flows (`upstream::progress`), and autolb's own answers to a call given
//! as gRPC statuses (HTTP 200 with `grpc-status` and `grpc-message`, Trailers-Only) instead
//! of HTTP errors a gRPC client could only guess from.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::retry::{AttemptTimeouts, Budget};
use crate::runtime::{PoolStats, Snapshot};

/// `grpc-status` codes autolb answers with.
pub mod code {
    pub const UNKNOWN: u8 = 2;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// Set on a local answer that means "too busy" (a full pool queue): RESOURCE_EXHAUSTED for
/// a gRPC call, not UNAVAILABLE like other 503s.
#[derive(Debug, Clone, Copy)]
pub struct Exhausted;

/// Whether a request is a gRPC call: `content-type: application/grpc`, alone or with a
/// `+codec` or parameters (not gRPC-Web's `application/grpc-web`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H M S m u n`).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let v = value.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What the proxy knows of one gRPC call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The client's deadline (`grpc-timeout` from the call's arrival).
    pub deadline: Option<Instant>,
}

impl Call {
    /// The call `headers` start, arrived at `arrived`; `None` for other requests.
    pub fn of(headers: &HeaderMap, arrived: Instant) -> Option<Call> {
        if !is_grpc(headers) {
            return None;
        }
        let deadline = headers
            .get("grpc-timeout")
            .and_then(parse_timeout)
            .and_then(|t| arrived.checked_add(t));
        Some(Call { deadline })
    }

    /// The budget of the call's wait for an answer: its deadline when it has one (not
    /// `timeouts.request_total`), else `total`.
    pub fn budget(call: Option<&Call>, arrived: Instant, total: Duration) -> Budget {
        match call.and_then(|c| c.deadline) {
            Some(deadline) => Budget { deadline },
            None => Budget::new(arrived, total),
        }
    }

    /// The timeouts of an attempt starting at `now`: with a deadline, the wait for the
    /// answer lasts until the deadline (`timeouts.response` does not cut what the client
    /// still allows; its end is DEADLINE_EXCEEDED); without one, `timeouts.response`, which
    /// the client's stream restarts while it flows (`Progress`), and the budget bounds only
    /// the connect. `None` when the budget is spent.
    pub fn attempt(
        &self,
        budget: &Budget,
        now: Instant,
        connect: Duration,
        response: Duration,
    ) -> Option<AttemptTimeouts> {
        let left = budget.left(now);
        if left.is_zero() {
            return None;
        }
        Some(match self.deadline {
            Some(_) => AttemptTimeouts {
                connect: connect.min(left),
                response: left,
                cut: true,
            },
            None => AttemptTimeouts {
                connect: connect.min(left),
                response,
                cut: false,
            },
        })
    }
}

/// The `grpc-status` of autolb's own HTTP answer `status` (the gRPC mapping of HTTP codes,
/// with timeouts as DEADLINE_EXCEEDED and limits as RESOURCE_EXHAUSTED).
pub fn status_of(status: StatusCode, exhausted: bool) -> u8 {
    match status.as_u16() {
        _ if exhausted => code::RESOURCE_EXHAUSTED,
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        413 | 414 | 429 | 431 => code::RESOURCE_EXHAUSTED,
        502 | 503 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// A `grpc-status` in `headers` (0-16; others are not gRPC's).
pub fn status_in(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes())
        .ok()?
        .parse::<u8>()
        .ok()
        .filter(|c| *c <= 16)
}

/// Count a call's end in its pool's `autolb_grpc_requests_total`, when `headers` (trailers,
/// or the headers of a Trailers-Only answer) carry its status.
pub fn count(stats: &PoolStats, headers: &HeaderMap) {
    if let Some(code) = status_in(headers) {
        stats.grpc_statuses[usize::from(code)].fetch_add(1, Ordering::Relaxed);
    }
}

/// autolb's own answer to a gRPC call as a gRPC status (`as_status`), counted for the pool
/// it names. A backend's answer, or a success, is left as it is.
pub fn local_answer(resp: Response<ProxyBody>, snapshot: &Snapshot) -> Response<ProxyBody> {
    let (resp, counted) = as_status(resp);
    if let Some((code, pool)) = counted {
        if let Some(p) = snapshot.pool(&pool) {
            p.stats.grpc_statuses[usize::from(code)].fetch_add(1, Ordering::Relaxed);
        }
    }
    resp
}

/// An answer autolb wrote as a gRPC status: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message` (the answer's error text, percent-encoded) in one
/// HEADERS frame that ends the stream (Trailers-Only), Retry-After kept; with the status and
/// the pool the answer names. Other answers come back as they are.
fn as_status(resp: Response<ProxyBody>) -> (Response<ProxyBody>, Option<(u8, String)>) {
    if resp.status() == StatusCode::OK || !matches!(resp.body(), ProxyBody::Full(_)) {
        return (resp, None);
    }
    let (mut parts, body) = resp.into_parts();
    let json = match &body {
        ProxyBody::Full(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(bytes).ok(),
        _ => None,
    };
    let text = |key: &str| {
        json.as_ref()
            .and_then(|v| v.get(key))
            .and_then(|e| e.as_str())
            .map(str::to_owned)
    };
    let message =
        text("error").unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("").to_owned());
    let exhausted = parts.extensions.remove::<Exhausted>().is_some();
    let status = status_of(parts.status, exhausted);
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(status)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", v);
    }
    if let Some(v) = parts.headers.remove(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, v);
    }
    parts.headers = headers;
    parts.status = StatusCode::OK;
    let pool = text("pool").map(|p| (status, p));
    (Response::from_parts(parts, ProxyBody::empty()), pool)
}

/// `grpc-message` encoding: printable ASCII but `%` as it is, every other byte `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn calls_are_told_by_their_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_parse_with_their_unit() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn local_errors_become_trailers_only_statuses() {
        let resp = super::super::local::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend available",
            Some("p"),
        );
        let (resp, counted) = as_status(resp);
        assert_eq!(counted, Some((14, "p".to_string())));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no backend available");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert!(http_body::Body::is_end_stream(resp.body()));
        let mut full = super::super::local::error(StatusCode::SERVICE_UNAVAILABLE, "queue", None);
        full.extensions_mut().insert(Exhausted);
        let (full, counted) = as_status(full);
        assert_eq!(full.headers()["grpc-status"], "8");
        assert_eq!(counted, None, "no pool named");
        assert_eq!(status_of(StatusCode::GATEWAY_TIMEOUT, false), 4);
        assert_eq!(status_of(StatusCode::TOO_MANY_REQUESTS, false), 8);
        assert_eq!(status_of(StatusCode::PAYLOAD_TOO_LARGE, false), 8);
        assert_eq!(status_of(StatusCode::BAD_GATEWAY, false), 14);
        assert_eq!(status_of(StatusCode::NOT_FOUND, false), 12);
        assert_eq!(percent_encode("a%b é"), "a%25b %C3%A9");
    }
}
