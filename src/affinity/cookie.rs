//! The sticky cookie's value: which backend, when it was issued, and an HMAC-SHA256 tag over
//! both (and the pool), so that a client can neither forge a choice nor extend its life.
//!
//! Format: `<backend id, 16 hex>.<issued, unix seconds in hex>.<tag, 22 base64url>`, e.g.
//! `9f86d081884c7d65.6650a1b2.Xk3cTz0Pq9mN2bV8rL1wAg`. The backend id is the xxh3 hash
//! (fixed seed) of the backend's address as configured, so every autolb node that shares the
//! secret and the config reads every other node's cookies.

use std::fmt::Write;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::balance::ring::hash_bytes;

/// Environment variable holding the key that signs sticky cookies (the same on every node).
pub const SECRET_ENV: &str = "AUTOLB_STICKY_SECRET";

/// The key used when `AUTOLB_STICKY_SECRET` is not set. It is public (it is in the source):
/// cookies stay stable across nodes and restarts, but a client who reads this could forge them.
pub const DEFAULT_SECRET: &str = "autolb-sticky-default-secret-set-AUTOLB_STICKY_SECRET";

/// Bytes of the HMAC-SHA256 tag kept in the cookie (128 bits).
const TAG_LEN: usize = 16;
/// Its base64url length without padding.
const TAG_B64_LEN: usize = 22;

/// The process-wide signing key: `AUTOLB_STICKY_SECRET`, else the documented default (with a
/// warning, once).
pub fn secret() -> &'static [u8] {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    SECRET.get_or_init(|| match std::env::var(SECRET_ENV) {
        Ok(s) if !s.is_empty() => {
            if s.len() < 16 {
                tracing::warn!(
                    "{SECRET_ENV} is shorter than 16 bytes: sticky cookies are easier to forge"
                );
            }
            s.into_bytes()
        }
        _ => {
            tracing::warn!(
                "{SECRET_ENV} is not set: sticky cookies are signed with autolb's public default \
                 key; set it (the same value on every autolb node) so that clients cannot forge them"
            );
            DEFAULT_SECRET.as_bytes().to_vec()
        }
    })
}

/// A backend's id in cookies: the hash of its configured address.
#[inline]
pub fn backend_id(address: &str) -> u64 {
    hash_bytes(address.as_bytes())
}

/// Signs and checks the cookie values of one pool.
#[derive(Clone)]
pub struct CookieCodec {
    /// Keyed once; cloned per use (saves hashing the key pads each time).
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieCodec")
    }
}

impl CookieCodec {
    /// A codec for `pool`: a cookie of another pool does not verify here.
    pub fn new(secret: &[u8], pool: &str) -> CookieCodec {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(pool.as_bytes());
        mac.update(&[0]);
        CookieCodec { mac }
    }

    fn tag(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(body);
        mac
    }

    /// The cookie value naming backend `id`, issued at `issued` (unix seconds).
    pub fn encode(&self, id: u64, issued: u64) -> String {
        let mut out = String::with_capacity(16 + 1 + 16 + 1 + TAG_B64_LEN);
        let _ = write!(out, "{id:016x}.{issued:x}");
        let tag = self.tag(out.as_bytes()).finalize().into_bytes();
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..TAG_LEN], &mut out);
        out
    }

    /// `(backend id, issued)` of a value this codec signed, or `None` for anything else.
    pub fn decode(&self, value: &[u8]) -> Option<(u64, u64)> {
        let dot = value.iter().rposition(|&b| b == b'.')?;
        let (body, tag_b64) = (&value[..dot], &value[dot + 1..]);
        if tag_b64.len() != TAG_B64_LEN || body.len() > 16 + 1 + 16 {
            return None;
        }
        let mut tag = [0u8; TAG_LEN + 2];
        let n = URL_SAFE_NO_PAD.decode_slice(tag_b64, &mut tag).ok()?;
        if n != TAG_LEN {
            return None;
        }
        // Constant time: a client learns nothing from how fast a guess fails.
        self.tag(body).verify_truncated_left(&tag[..TAG_LEN]).ok()?;
        let body = std::str::from_utf8(body).ok()?;
        let (id, issued) = body.split_once('.')?;
        if id.len() != 16 || issued.is_empty() {
            return None;
        }
        Some((
            u64::from_str_radix(id, 16).ok()?,
            u64::from_str_radix(issued, 16).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_resistance() {
        let codec = CookieCodec::new(b"secret", "web");
        let v = codec.encode(0x0123_4567_89ab_cdef, 0x6650_a1b2);
        assert_eq!(v.len(), 16 + 1 + 8 + 1 + TAG_B64_LEN, "{v}");
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!(
            codec.decode(v.as_bytes()),
            Some((0x0123_4567_89ab_cdef, 0x6650_a1b2))
        );
        // Another backend id, a later issue time, a flipped tag: all refused.
        let forged_id = v.replacen("0123", "0124", 1);
        assert_eq!(codec.decode(forged_id.as_bytes()), None);
        let forged_time = v.replacen(".6650a1b2.", ".7650a1b2.", 1);
        assert_eq!(codec.decode(forged_time.as_bytes()), None);
        let mut bad_tag = v.clone().into_bytes();
        let last = bad_tag.len() - 2;
        bad_tag[last] = if bad_tag[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(codec.decode(&bad_tag), None);
        // Other pools and other secrets do not accept it either.
        assert_eq!(
            CookieCodec::new(b"secret", "api").decode(v.as_bytes()),
            None
        );
        assert_eq!(CookieCodec::new(b"other", "web").decode(v.as_bytes()), None);
        for garbage in ["", ".", "..", "abc", "x.y.z", &v[..v.len() - 1], "é.é.é"] {
            assert_eq!(codec.decode(garbage.as_bytes()), None, "{garbage:?}");
        }
    }

    #[test]
    fn ids_are_stable() {
        assert_eq!(backend_id("127.0.0.1:3001"), backend_id("127.0.0.1:3001"));
        assert_ne!(backend_id("127.0.0.1:3001"), backend_id("127.0.0.1:3002"));
    }
}
