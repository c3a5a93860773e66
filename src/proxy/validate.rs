//! Hostile-input checks. `check_head` validates a raw HTTP/1 request head strictly
//! (RFC 9112: token methods, no bare CR/LF, NUL or obs-fold, no whitespace before a colon,
//! one valid Content-Length or exactly `Transfer-Encoding: chunked` and never both, no TE on
//! HTTP/1.0, one Host that agrees with an absolute-form target); `server::framing` runs it on
//! the bytes before hyper sees them. `check` runs per request in `proxy()` on what hyper
//! parsed (HTTP/1 and HTTP/2), after `check_target` (414) and `normalize` (which refuses
//! duplicate, disagreeing and invalid Hosts and bad paths): 413, and the listener's
//! per-client-IP rate limit (429 with Retry-After); `check_route` the matched route's,
//! after routing.

use std::time::Instant;

use http::header::{CONNECTION, CONTENT_LENGTH, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};

use super::body::ProxyBody;
use super::{local, ConnContext};
use crate::config::Limits;
use crate::runtime::ip_limiter::IpLimiter;
use crate::runtime::Route;

/// How a request's body is delimited, once its head is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// An upgrade: what follows may be another protocol.
    Tunnel,
}

/// Why a request head is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request head: {0}")]
pub struct HeadError(pub &'static str);

/// RFC 9110 tchar.
pub fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// `tchar` by byte value: one load per byte of every method and field name.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
            )
            || matches!(c, b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    t
};

/// A field-value byte (RFC 9110 5.5): VCHAR, obs-text, SP, HTAB.
fn is_value_byte(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// 1*DIGIT that fits a u64.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The authority of an absolute-form target (`http://a.example:80/x` -> `a.example:80`).
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let lower = target.get(..8).map(|p| p.to_ascii_lowercase())?;
    let rest = if lower.starts_with(b"http://") {
        &target[7..]
    } else if lower.starts_with(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The lines of a head, split at CRLF without allocating; a bare CR or LF ends it with an
/// error.
struct CrlfLines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for CrlfLines<'a> {
    type Item = Result<&'a [u8], HeadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.take()?;
        let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
            return Some(Ok(rest));
        };
        if rest[i] == b'\n' {
            return Some(Err(HeadError("bare LF")));
        }
        if rest.get(i + 1) != Some(&b'\n') {
            return Some(Err(HeadError("bare CR")));
        }
        self.rest = Some(&rest[i + 2..]);
        Some(Ok(&rest[..i]))
    }
}

/// Validate one request head (request line, fields and the empty line). Leading empty
/// lines (RFC 9112 2.2) are allowed.
pub fn check_head(head: &[u8]) -> Result<RequestFraming, HeadError> {
    let mut head = head;
    while let Some(rest) = head.strip_prefix(b"\r\n") {
        head = rest;
    }
    let body = head
        .strip_suffix(b"\r\n\r\n")
        .ok_or(HeadError("head must end with CRLF CRLF"))?;
    let mut lines = CrlfLines { rest: Some(body) };
    let request_line = lines.next().ok_or(HeadError("empty head"))??;
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(HeadError("method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HeadError("invalid request target"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(HeadError("unsupported HTTP version")),
    };
    let (mut content_length, mut chunked, mut te_seen) = (None, false, false);
    let (mut host, mut upgrade) = (None::<&[u8]>, false);
    for line in lines {
        let line = line?;
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(HeadError("obs-fold"));
        }
        let colon = memchr::memchr(b':', line).ok_or(HeadError("field without colon"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(HeadError("invalid field name (whitespace before colon?)"));
        }
        // Without an early exit, so that it compiles to vector code.
        if !value.iter().fold(true, |ok, b| ok & is_value_byte(*b)) {
            return Err(HeadError("control character in field value"));
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(HeadError("duplicate Content-Length"));
            }
            content_length =
                Some(parse_content_length(value).ok_or(HeadError("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te_seen {
                return Err(HeadError("duplicate Transfer-Encoding"));
            }
            te_seen = true;
            if value != b"chunked" {
                return Err(HeadError("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HeadError("duplicate Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if te_seen && http10 {
        return Err(HeadError("Transfer-Encoding on HTTP/1.0"));
    }
    if te_seen && content_length.is_some() {
        return Err(HeadError("both Content-Length and Transfer-Encoding"));
    }
    if !http10 && host.is_none() {
        return Err(HeadError("HTTP/1.1 request without Host"));
    }
    if let (Some(authority), Some(host)) = (absolute_authority(target), host) {
        if !authority.eq_ignore_ascii_case(host) {
            return Err(HeadError("absolute-form authority disagrees with Host"));
        }
    }
    // CONNECT is answered, never tunnelled (`refused_method`): what follows it is read as
    // the next request head, and refused unless it is one.
    Ok(if upgrade {
        RequestFraming::Tunnel
    } else if chunked {
        RequestFraming::Chunked
    } else {
        content_length
            .filter(|n| *n > 0)
            .map_or(RequestFraming::None, RequestFraming::Length)
    })
}

/// 414 for a request target (as the client sent it: before `normalize`) longer than
/// `limits.max_request_line`.
pub fn check_target<B>(req: &Request<B>, limits: &Limits) -> Option<Response<ProxyBody>> {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    (target_len > limits.max_request_line)
        .then(|| local::error(StatusCode::URI_TOO_LONG, "request target too long", None))
}

/// Methods autolb answers itself and never forwards: CONNECT asks for a tunnel (autolb is a
/// reverse proxy, not a forward one; forwarded, it would reach a backend rewritten; only
/// HTTP/2's extended CONNECT for a WebSocket, RFC 8441, is proxied), TRACE
/// echoes a request back, forwarded headers included (cross-site tracing). Answered 405 as
/// nginx answers both (HAProxy forwards them; Envoy refuses CONNECT unless configured).
/// The answer (405) is checked first, before the target is normalized; an HTTP/1 connection
/// is closed after it (what follows a CONNECT may be another protocol).
pub fn check_method<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    let method = req.method();
    if method != Method::CONNECT && method != Method::TRACE || super::websocket::is_h2(req) {
        return None;
    }
    tracing::info!(%method, "method not proxied: 405");
    let message = format!("method {method} is not proxied");
    let mut resp = local::error(StatusCode::METHOD_NOT_ALLOWED, &message, None);
    if req.version() < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Some(resp)
}

/// Per-request checks on what hyper parsed; `Some` is the answer instead of proxying.
pub fn check<B>(req: &Request<B>, ctx: &ConnContext) -> Option<Response<ProxyBody>> {
    let limits = &ctx.limits;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| parse_content_length(v.as_bytes()));
    if declared.is_some_and(|n| n > limits.max_body) {
        return Some(local::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            None,
        ));
    }
    admit(ctx.rate_limit.as_deref()?, ctx, None)
}

/// The rate limit of the route that matched (after the listener's): `Some` is the 429.
pub fn check_route(route: &Route, pool: &str, ctx: &ConnContext) -> Option<Response<ProxyBody>> {
    admit(route.rate_limit.as_deref()?, ctx, Some(pool))
}

/// A token from `limiter` for the client's IP, or 429 with Retry-After.
fn admit(
    limiter: &IpLimiter,
    ctx: &ConnContext,
    pool: Option<&str>,
) -> Option<Response<ProxyBody>> {
    let wait_s = limiter.admit(ctx.client.ip, Instant::now()).err()?;
    let mut resp = local::error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded", pool);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(wait_s));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(head: &str) -> RequestFraming {
        check_head(head.as_bytes()).unwrap_or_else(|e| panic!("{head:?}: {e}"))
    }

    fn bad(head: &str) {
        assert!(check_head(head.as_bytes()).is_err(), "accepted {head:?}");
    }

    #[test]
    fn good_heads_are_framed() {
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            RequestFraming::None
        );
        assert_eq!(
            ok("\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            RequestFraming::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked \r\n\r\n"),
            RequestFraming::Chunked
        );
        assert_eq!(
            ok("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
            RequestFraming::Tunnel
        );
        assert_eq!(ok("GET / HTTP/1.0\r\n\r\n"), RequestFraming::None);
        assert_eq!(
            ok("GET http://a:1/x HTTP/1.1\r\nHost: A:1\r\n\r\n"),
            RequestFraming::None
        );
    }

    #[test]
    fn hostile_heads_are_refused() {
        let h = "POST / HTTP/1.1\r\nHost: a\r\n";
        for extra in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 0x5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: Chunked\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: \x0bchunked\r\n",
            "Transfer-Encoding : chunked\r\n",
            "X: a\r\n Transfer-Encoding: chunked\r\n",
            "X: a\x00b\r\n",
            "X: a\rb\r\n",
            "X: a\nb\r\n",
            "Host: b\r\n",
        ] {
            bad(&format!("{h}{extra}\r\n"));
        }
        bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("G(T / HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET / HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1\n\n");
        bad("GET / HTTP/2.0\r\nHost: a\r\n\r\n");
        bad("GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
