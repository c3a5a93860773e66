//! Header rewriting: hop-by-hop headers stripped both ways, and X-Forwarded-For/-Proto/-Host
//! and Forwarded set by autolb (a client's values are kept only from trusted proxies).

use std::net::IpAddr;

use http::header::{HeaderName, FORWARDED, HOST};
use http::{HeaderMap, HeaderValue};

pub use crate::upstream::hop_by_hop::{strip_hop_by_hop, TeTrailers};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-proto`, for lookups elsewhere.
pub const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What autolb knows about the client connection, computed once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Whether the client is a trusted proxy whose forwarding headers are kept.
    pub trusted: bool,
    /// The client address as an X-Forwarded-For value.
    xff: HeaderValue,
    /// The `for=` node of a Forwarded element (IPv6 quoted and bracketed).
    forwarded_for: String,
}

impl ClientInfo {
    pub fn new(ip: IpAddr, proto: &'static str, trusted: bool) -> ClientInfo {
        let ip = ip.to_canonical();
        let text = ip.to_string();
        let forwarded_for = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        ClientInfo {
            ip,
            proto,
            trusted,
            xff: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for,
        }
    }
}

/// Prepare a request's headers for the backend: strip hop-by-hop headers, then set the
/// forwarding headers (after stripping, so a client's Connection header cannot remove them).
/// `host` is the request's authority, if any. Returns whether the client's `TE` asked for
/// `trailers`: HTTP/2 backends get `te: trailers` then (the one TE value HTTP/2 allows; gRPC
/// servers refuse a call without it, see `TeTrailers`), HTTP/1.1 backends no TE at all.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
    keep_upgrade: bool,
) -> bool {
    let te_trailers = strip_hop_by_hop(headers, keep_upgrade);
    // Room for what is added below: one growth at most (a new connection's first request
    // comes in a map sized for its own fields).
    headers.reserve(5);
    let host = host.cloned();

    // X-Forwarded-For: append to a trusted chain, else replace.
    let xff = match (client.trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(chain)) => {
            let mut v = chain;
            v.push_str(", ");
            v.push_str(client.xff.to_str().unwrap_or("unknown"));
            HeaderValue::from_str(&v).unwrap_or_else(|_| client.xff.clone())
        }
        _ => client.xff.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);

    if !(client.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(client.proto),
        );
    }
    if !(client.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match &host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    // Forwarded (RFC 7239): for=client;host="...";proto=..., written straight into the
    // worker's arena (no String, no copy).
    let chain = if client.trusted {
        joined(headers, &FORWARDED)
    } else {
        None
    };
    let host_text = host.as_ref().and_then(|h| h.to_str().ok());
    let len = chain.as_ref().map_or(0, |c| c.len() + 2)
        + 4
        + client.forwarded_for.len()
        + host_text.map_or(0, |h| h.len() + 8)
        + 7
        + client.proto.len();
    let value = super::arena::bytes(len, |b| {
        if let Some(c) = &chain {
            b.extend_from_slice(c.as_bytes());
            b.extend_from_slice(b", ");
        }
        b.extend_from_slice(b"for=");
        b.extend_from_slice(client.forwarded_for.as_bytes());
        if let Some(h) = host_text {
            b.extend_from_slice(b";host=\"");
            for c in h.bytes().filter(|c| *c != b'"' && *c != b'\\') {
                b.extend_from_slice(&[c]);
            }
            b.extend_from_slice(b"\"");
        }
        b.extend_from_slice(b";proto=");
        b.extend_from_slice(client.proto.as_bytes());
    });
    match HeaderValue::from_maybe_shared(value) {
        Ok(v) => {
            headers.insert(FORWARDED, v);
        }
        Err(_) => {
            headers.remove(FORWARDED);
        }
    }
    if headers.get(HOST).is_none() {
        if let Some(h) = host {
            headers.insert(HOST, h);
        }
    }
    te_trailers
}

/// All values of a header joined with ", ", or `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?.trim();
        if s.is_empty() {
            continue;
        }
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn named_fields_match_any_case_and_upgrades_keep_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Secret , close"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("trailer", "x-sum"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h["upgrade"], "websocket",
            "kept for the upgrade in progress"
        );
        for gone in ["connection", "x-secret", "trailer"] {
            assert!(h.get(gone).is_none(), "{gone} should be stripped");
        }
        assert_eq!(h.len(), 2);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("upgrade").is_none());
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_named_headers_go_but_ours_stay() {
        let mut h = map(&[
            (
                "connection",
                "keep-alive, x-secret, x-forwarded-for, forwarded",
            ),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, Trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-kept", "yes"),
        ]);
        let client = ClientInfo::new("10.0.0.9".parse().expect("ip"), "http", false);
        let host = HeaderValue::from_static("example.com");
        assert!(rewrite_request(&mut h, &client, Some(&host), false));
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(h.get(gone).is_none(), "{gone} should be stripped");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.9;host=\"example.com\";proto=http"
        );
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&[("te", "gzip"), ("connection", "te")]);
        assert!(!rewrite_request(&mut h, &client, Some(&host), false));
        assert!(h.get("te").is_none(), "a TE without trailers is stripped");
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let client = ClientInfo::new("::1".parse().expect("ip"), "http", true);
        rewrite_request(&mut h, &client, None, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=\"[::1]\";proto=http");
    }
}
