//! Hop-by-hop header fields (RFC 9110 7.6.1): removed from every message autolb forwards,
//! either way.

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING};
use http::HeaderMap;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// On a request whose client sent `TE: trailers`: an HTTP/2 backend gets `te: trailers`.
#[derive(Debug, Clone, Copy)]
pub struct TeTrailers;

/// Remove hop-by-hop headers: those named by Connection, then the fixed set (RFC 9110 7.6.1).
/// `Upgrade` is kept only when `keep_upgrade` (a protocol upgrade in progress). Returns
/// whether a `TE` header asked for `trailers` (the one TE value a request keeps, see
/// `rewrite_request`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    use http::header::UPGRADE;
    let fixed: [&HeaderName; 7] = [
        &CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ];
    // One pass over the few names present (most messages carry none of these) instead of a
    // hashed lookup for each of the seven; only those present are removed.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| *f == name) {
            present |= 1 << i;
        }
    }
    if keep_upgrade {
        present &= !(1 << 4);
    }
    if present == 0 {
        return false;
    }
    let te_trailers = present & (1 << 1) != 0
        && headers
            .get_all(TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            });
    if present & 1 != 0 {
        // The fields Connection names, where present ("close" names none).
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| headers.contains_key(*token))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in fixed.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    te_trailers
}
