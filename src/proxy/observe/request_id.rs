//! `X-Request-Id`: kept when a trusted proxy (the listener's `trusted_proxies`) sent a
//! well-formed one, else a new random UUID (v4); the backend gets it, the client sees it on
//! the response (unless the backend answered with its own).

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The header, lower-case.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// An id we take from a trusted proxy: 1 to 200 visible ASCII characters.
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// The request's id: a trusted client's (when well-formed), else a new one; `headers` then
/// carry exactly that one.
pub fn assign(headers: &mut HeaderMap, trusted: bool) -> HeaderValue {
    if trusted {
        if let Some(v) = headers.get(&HEADER).filter(|v| acceptable(v)).cloned() {
            headers.insert(HEADER.clone(), v.clone());
            return v;
        }
    }
    let id = generate();
    headers.insert(HEADER.clone(), id.clone());
    id
}

/// Put `id` on a response that has none.
pub fn echo(headers: &mut HeaderMap, id: &HeaderValue) {
    headers.entry(&HEADER).or_insert_with(|| id.clone());
}

/// A random UUID, version 4 (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // Version 4, variant 10xx.
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    // Two hex digits per byte, a dash before bytes 4, 6, 8 and 10 (8-4-4-4-12).
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in n.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[(byte >> 4) as usize];
        out[at + 1] = HEX[(byte & 0xf) as usize];
        at += 2;
    }
    // From the worker's arena: the value is cloned for the response, which would make a
    // `Vec`-backed one allocate again.
    let bytes = crate::proxy::arena::bytes(out.len(), |b| b.extend_from_slice(&out));
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v4_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn only_trusted_clients_choose_their_id() {
        let mut h = HeaderMap::new();
        h.insert(&HEADER, HeaderValue::from_static("from-client"));
        let id = assign(&mut h, false);
        assert_ne!(id, "from-client");
        assert_eq!(h[&HEADER], id);
        let mut h = HeaderMap::new();
        h.append(&HEADER, HeaderValue::from_static("from-proxy"));
        h.append(&HEADER, HeaderValue::from_static("another"));
        assert_eq!(assign(&mut h, true), "from-proxy");
        assert_eq!(h.get_all(&HEADER).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(&HEADER, HeaderValue::from_static("has space"));
        assert_ne!(assign(&mut h, true), "has space", "malformed: replaced");
        let mut resp = HeaderMap::new();
        echo(&mut resp, &id);
        assert_eq!(resp[&HEADER], id);
        resp.insert(&HEADER, HeaderValue::from_static("backend's"));
        echo(&mut resp, &id);
        assert_eq!(resp[&HEADER], "backend's");
    }
}
