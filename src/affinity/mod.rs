//! Affinity: the request value a `consistent_hash` pool hashes (source IP, a header, a
//! cookie or the URI), hashed with a fixed seed so every node gives the same answer; and
//! sticky sessions (`sticky:`): signed cookies naming a backend, or hashed keys.

pub mod cookie;
mod sticky;

pub use sticky::{take_cookie, Affinity, Resolved};

use std::net::IpAddr;

use http::request::Parts;

use crate::balance::ring::hash_bytes;
use crate::config::HashKey;

/// The hash of a request's key, or `None` when the request does not carry it.
pub fn hash_key(key: &HashKey, parts: &Parts, client: IpAddr) -> Option<u64> {
    match key {
        HashKey::SourceIp => Some(match client {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashKey::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => cookie_value(&parts.headers, name).map(hash_bytes),
        HashKey::Uri => Some(hash_bytes(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        )),
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .find_map(|(k, v)| (k == name.as_bytes()).then_some(v))
}

/// The `(name, value)` pairs of one Cookie header value, trimmed.
fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value
        .split(|&b| b == b';')
        .filter_map(|pair| split_pair(trim(pair)))
}

/// `name=value` (both trimmed), or `None` without `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((trim(&pair[..eq]), trim(&pair[eq + 1..])))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn cookie_lookup_handles_spacing_and_many_headers() {
        let p = parts(&[("cookie", "a=1; sid = xyz ;b=2"), ("cookie", "c=3")], "/");
        assert_eq!(cookie_value(&p.headers, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(&p.headers, "c"), Some(&b"3"[..]));
        assert_eq!(cookie_value(&p.headers, "missing"), None);
    }

    #[test]
    fn keys_are_stable_and_absent_keys_are_none() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let p = parts(&[("x-user", "42")], "/a?b=c");
        let h = HashKey::Header("x-user".into());
        assert_eq!(hash_key(&h, &p, ip), hash_key(&h, &p, ip));
        assert_eq!(hash_key(&HashKey::Header("nope".into()), &p, ip), None);
        assert_eq!(hash_key(&HashKey::Cookie("sid".into()), &p, ip), None);
        assert_ne!(
            hash_key(&HashKey::Uri, &p, ip),
            hash_key(&HashKey::Uri, &parts(&[], "/a"), ip)
        );
        assert!(hash_key(&HashKey::SourceIp, &p, ip).is_some());
    }
}
