//! Session affinity of one pool, built with the snapshot: which backend a request is pinned
//! to (by its signed cookie, else by a hashed header or source IP on the consistent-hash ring),
//! and the `Set-Cookie` that pins a client to the backend that answered it; with
//! `learn_cookie`, the application's own session cookie (its binding to a backend is kept in
//! the shared state, `state::learned`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use super::cookie::{backend_id, secret, CookieCodec};
use crate::backend::Backend;
use crate::balance::ring::{hash_bytes, Ring};
use crate::config::{SameSite, Sticky, StickyCookie};

/// A cookie issued up to this far in the future (clock skew between nodes) is still valid.
const MAX_SKEW_SECS: u64 = 300;

/// The cookie side of a pool's affinity.
#[derive(Debug)]
struct CookieSpec {
    name: String,
    ttl_secs: u64,
    codec: CookieCodec,
    /// `; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax`, rendered once.
    attributes: String,
    /// `None`: Secure on https requests (always with SameSite=None).
    secure: Option<bool>,
    same_site_none: bool,
}

/// Where the affinity of a request points, decided before the first pick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The backend the request is pinned to, if it may still serve pinned traffic.
    pub pinned: Option<usize>,
    /// The backend the client's valid (and not yet due for refresh) cookie names: a response
    /// from it needs no new cookie.
    pub cookie_backend: Option<usize>,
}

/// The affinity settings of one pool over its current backends.
#[derive(Debug)]
pub struct Affinity {
    cookie: Option<CookieSpec>,
    header: Option<http::HeaderName>,
    source_ip: bool,
    /// Hashed keys go through this ring (the pool's own ring exists only for consistent_hash).
    ring: Ring,
    /// Cookie ids of the backends, by index.
    ids: Box<[u64]>,
    /// `learn_cookie` and its ttl.
    learn: Option<(String, Duration)>,
}

impl Affinity {
    pub fn new(sticky: &Sticky, pool: &str, backends: &[Arc<Backend>]) -> Affinity {
        let hashed = sticky.source_ip || sticky.header.is_some();
        let ring = if hashed {
            Ring::new(
                &backends
                    .iter()
                    .map(|b| (b.address.as_str(), b.weight))
                    .collect::<Vec<_>>(),
            )
        } else {
            Ring::default()
        };
        Affinity {
            cookie: sticky.cookie.as_ref().map(|c| CookieSpec::new(c, pool)),
            header: sticky
                .header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            source_ip: sticky.source_ip,
            ring,
            ids: backends.iter().map(|b| backend_id(&b.address)).collect(),
            learn: sticky
                .learn_cookie
                .as_ref()
                .map(|l| (l.name.clone(), l.ttl)),
        }
    }

    /// `cookie`, `source_ip`, `header:NAME`, joined with `+` in the order they are tried.
    pub fn mode(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(c) = &self.cookie {
            parts.push(format!("cookie:{}", c.name));
        }
        if let Some(h) = &self.header {
            parts.push(format!("header:{h}"));
        }
        if self.source_ip {
            parts.push("source_ip".into());
        }
        if let Some((name, _)) = &self.learn {
            parts.push(format!("learn:{name}"));
        }
        parts.join("+")
    }

    /// Does this pool set a cookie?
    pub fn uses_cookie(&self) -> bool {
        self.cookie.is_some()
    }

    /// The learned cookie's name and ttl (`learn_cookie`).
    pub fn learn_cookie(&self) -> Option<(&str, Duration)> {
        self.learn.as_ref().map(|(n, t)| (n.as_str(), *t))
    }

    /// The value of the learned cookie in a request (left for the backend to see).
    pub fn learned_value(&self, headers: &HeaderMap) -> Option<String> {
        let (name, _) = self.learn.as_ref()?;
        let v = super::cookie_value(headers, name)?;
        (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned())
    }

    /// The value a response's `Set-Cookie` gives the learned cookie (not a deletion).
    pub fn learned_from_response(&self, headers: &HeaderMap) -> Option<String> {
        let (name, _) = self.learn.as_ref()?;
        headers.get_all(SET_COOKIE).iter().find_map(|v| {
            let mut attrs = v.as_bytes().split(|&b| b == b';');
            let (k, val) = super::split_pair(super::trim(attrs.next()?))?;
            // `Max-Age=0` (or negative) deletes the cookie: nothing to learn.
            let deleted = attrs.any(|a| {
                super::split_pair(super::trim(a)).is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case(b"max-age")
                        && (v.first() == Some(&b'-') || v.iter().all(|&c| c == b'0'))
                })
            });
            (k == name.as_bytes() && !val.is_empty() && !deleted)
                .then(|| String::from_utf8_lossy(val).into_owned())
        })
    }

    /// Pin `resolved` to the backend at `address` (a learned session) when it serves pinned
    /// traffic; false when it does not (or is gone), so the request is balanced anew.
    pub fn pin_address(
        &self,
        resolved: &mut Resolved,
        address: &str,
        backends: &[Arc<Backend>],
        panic: bool,
    ) -> bool {
        let Some(idx) = backends.iter().position(|b| b.address == address) else {
            return false;
        };
        if !serves(backends, idx, panic) {
            return false;
        }
        resolved.pinned = Some(idx);
        true
    }

    /// Decide where `headers`' request is pinned, and remove the sticky cookie from them (the
    /// backend never sees it). `panic`: the pool ignores health (only `disabled` is skipped).
    pub fn resolve(
        &self,
        headers: &mut HeaderMap,
        client: IpAddr,
        backends: &[Arc<Backend>],
        panic: bool,
    ) -> Resolved {
        let serves = |i: usize| serves(backends, i, panic);
        let mut out = Resolved::default();
        if let Some(spec) = &self.cookie {
            if let Some(value) = take_cookie(headers, &spec.name) {
                if let Some((idx, fresh)) = self.check(spec, value.as_bytes(), unix_now()) {
                    if serves(idx) {
                        out.pinned = Some(idx);
                        out.cookie_backend = fresh.then_some(idx);
                        return out;
                    }
                }
            }
        }
        let key = match &self.header {
            Some(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
            None => None,
        };
        let key = key.or_else(|| self.source_ip.then(|| ip_hash(client)));
        if let Some(h) = key {
            out.pinned = self.ring.lookup(h, serves);
        }
        out
    }

    /// The backend index a cookie value names and whether it is fresh (younger than half
    /// its ttl), or `None` when forged, garbled, expired or naming no current backend.
    fn check(&self, spec: &CookieSpec, value: &[u8], now: u64) -> Option<(usize, bool)> {
        let (id, issued) = spec.codec.decode(value)?;
        if issued > now + MAX_SKEW_SECS {
            return None;
        }
        let age = now.saturating_sub(issued);
        if age >= spec.ttl_secs {
            return None;
        }
        let idx = self.ids.iter().position(|&x| x == id)?;
        Some((idx, age < spec.ttl_secs / 2))
    }

    /// A `Set-Cookie` value pinning the client to backend `idx`; `https`: the request came
    /// over https (as seen by the client). `None` when this pool sets no cookie.
    pub fn set_cookie(&self, idx: usize, https: bool) -> Option<HeaderValue> {
        let spec = self.cookie.as_ref()?;
        let id = *self.ids.get(idx)?;
        let value = spec.codec.encode(id, unix_now());
        let secure = spec.secure.unwrap_or(https || spec.same_site_none);
        let mut s =
            String::with_capacity(spec.name.len() + value.len() + spec.attributes.len() + 9);
        s.push_str(&spec.name);
        s.push('=');
        s.push_str(&value);
        s.push_str(&spec.attributes);
        if secure {
            s.push_str("; Secure");
        }
        HeaderValue::from_str(&s).ok()
    }
}

impl CookieSpec {
    fn new(c: &StickyCookie, pool: &str) -> CookieSpec {
        let ttl_secs = c.ttl.as_secs().max(1);
        CookieSpec {
            name: c.name.clone(),
            ttl_secs,
            codec: CookieCodec::new(secret(), pool),
            attributes: format!(
                "; Path={}; Max-Age={ttl_secs}; HttpOnly; SameSite={}",
                c.path,
                c.same_site.as_str()
            ),
            secure: c.secure,
            same_site_none: c.same_site == SameSite::None,
        }
    }
}

/// May backend `i` take pinned traffic? `panic`: only `disabled` and `maint` are skipped.
fn serves(backends: &[Arc<Backend>], i: usize, panic: bool) -> bool {
    backends.get(i).is_some_and(|b| {
        if panic {
            b.in_service()
        } else {
            b.serves_pinned()
        }
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Remove every `name=` pair from the Cookie headers (HAProxy `indirect`), keeping the other
/// cookies in order; returns the first value found. Headers without it are left untouched.
pub fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let present = headers
        .get_all(COOKIE)
        .iter()
        .any(|v| super::cookie_pairs(v.as_bytes()).any(|(k, _)| k == name.as_bytes()));
    if !present {
        return None;
    }
    let mut found: Option<String> = None;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(COOKIE) {
        let mut rest: Vec<u8> = Vec::with_capacity(v.len());
        for pair in v.as_bytes().split(|&b| b == b';') {
            let trimmed = super::trim(pair);
            if trimmed.is_empty() {
                continue;
            }
            match super::split_pair(trimmed) {
                Some((k, val)) if k == name.as_bytes() => {
                    if found.is_none() {
                        found = Some(String::from_utf8_lossy(val).into_owned());
                    }
                }
                _ => {
                    if !rest.is_empty() {
                        rest.extend_from_slice(b"; ");
                    }
                    rest.extend_from_slice(trimmed);
                }
            }
        }
        if !rest.is_empty() {
            if let Ok(hv) = HeaderValue::from_bytes(&rest) {
                kept.push(hv);
            }
        }
    }
    headers.remove(COOKIE);
    for v in kept {
        headers.append(COOKIE, v);
    }
    found
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 4000 + i).parse().expect("addr");
                Arc::new(Backend::for_tests(addr, 1))
            })
            .collect()
    }

    fn sticky(cookie: bool, source_ip: bool, header: Option<&str>) -> Sticky {
        Sticky {
            cookie: cookie.then(|| StickyCookie {
                name: "SID".into(),
                ttl: Duration::from_secs(3600),
                path: "/".into(),
                same_site: SameSite::Lax,
                secure: None,
            }),
            source_ip,
            header: header.map(String::from),
            learn_cookie: None,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("SID={value}")).expect("value"),
        );
        h
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn take_cookie_removes_only_ours() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; SID=x; b=2"));
        h.append(COOKIE, HeaderValue::from_static("SID=y;c=3"));
        h.append(COOKIE, HeaderValue::from_static("SID=z"));
        assert_eq!(take_cookie(&mut h, "SID").as_deref(), Some("x"));
        let left: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        // Absent: the headers are left exactly as they were.
        let before = h.clone();
        assert_eq!(take_cookie(&mut h, "SID"), None);
        assert_eq!(h, before);
    }

    #[test]
    fn cookies_pin_while_the_backend_serves_pinned_traffic() {
        let bs = backends(3);
        let a = Affinity::new(&sticky(true, false, None), "web", &bs);
        let set = a.set_cookie(1, false).expect("cookie");
        let set = set.to_str().expect("text");
        assert!(
            set.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let value = &set["SID=".len()..set.find(';').expect("attributes")];
        let pinned = Resolved {
            pinned: Some(1),
            cookie_backend: Some(1),
        };
        assert_eq!(a.resolve(&mut with_cookie(value), IP, &bs, false), pinned);
        // Draining keeps its sessions; down loses them (no other key: not pinned).
        bs[1].stats.draining.store(true, Ordering::Relaxed);
        assert_eq!(a.resolve(&mut with_cookie(value), IP, &bs, false), pinned);
        bs[1].stats.up.store(false, Ordering::Relaxed);
        let none = Resolved::default();
        assert_eq!(a.resolve(&mut with_cookie(value), IP, &bs, false), none);
        // ... unless the pool is in panic mode.
        assert_eq!(a.resolve(&mut with_cookie(value), IP, &bs, true), pinned);
        // A pool whose backends changed: the cookie names nobody.
        let other = Affinity::new(&sticky(true, false, None), "web", &backends(1));
        assert_eq!(other.resolve(&mut with_cookie(value), IP, &bs, false), none);
    }

    #[test]
    fn old_cookies_are_refreshed_and_expired_ones_ignored() {
        let bs = backends(2);
        let a = Affinity::new(&sticky(true, false, None), "web", &bs);
        let spec = a.cookie.as_ref().expect("cookie");
        let now = unix_now();
        let at = |age: u64| spec.codec.encode(a.ids[0], now - age);
        let resolve = |v: String| a.resolve(&mut with_cookie(&v), IP, &bs, false);
        assert_eq!(resolve(at(10)).cookie_backend, Some(0));
        let old = resolve(at(1900));
        assert_eq!((old.pinned, old.cookie_backend), (Some(0), None));
        assert_eq!(resolve(at(3600)), Resolved::default());
        let future = spec.codec.encode(a.ids[0], now + 3 * MAX_SKEW_SECS);
        assert_eq!(resolve(future), Resolved::default());
    }

    #[test]
    fn hashed_keys_try_the_header_then_the_source_ip() {
        let bs = backends(4);
        let a = Affinity::new(&sticky(false, true, Some("x-user")), "web", &bs);
        assert_eq!(a.mode(), "header:x-user+source_ip");
        assert!(!a.uses_cookie() && a.set_cookie(0, true).is_none());
        let mut users = std::collections::BTreeSet::new();
        for u in 0..40 {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from(u));
            let p = a.resolve(&mut h.clone(), IP, &bs, false).pinned;
            assert_eq!(
                p,
                a.resolve(&mut h, "10.9.9.9".parse().expect("ip"), &bs, false)
                    .pinned
            );
            users.insert(p.expect("pinned"));
        }
        assert!(users.len() >= 3, "{users:?}");
        let by_ip = a.resolve(&mut HeaderMap::new(), IP, &bs, false).pinned;
        assert!(by_ip.is_some());
        assert_eq!(
            a.resolve(&mut HeaderMap::new(), IP, &bs, false).pinned,
            by_ip
        );
        let header_only = Affinity::new(&sticky(false, false, Some("x-user")), "web", &bs);
        let none = header_only.resolve(&mut HeaderMap::new(), IP, &bs, false);
        assert_eq!(none, Resolved::default());
    }

    #[test]
    fn learned_cookies_are_read_from_set_cookie_and_pin_by_address() {
        let bs = backends(3);
        let mut s = sticky(false, false, None);
        s.learn_cookie = Some(crate::config::LearnCookie {
            name: "JSESSIONID".into(),
            ttl: Duration::from_secs(60),
        });
        let a = Affinity::new(&s, "web", &bs);
        assert_eq!(a.mode(), "learn:JSESSIONID");
        assert!(!a.uses_cookie());
        let mut resp = HeaderMap::new();
        resp.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        assert_eq!(a.learned_from_response(&resp), None);
        resp.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; Path=/; HttpOnly"),
        );
        assert_eq!(a.learned_from_response(&resp).as_deref(), Some("abc"));
        let mut gone = HeaderMap::new();
        gone.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=x; Max-Age=0"),
        );
        assert_eq!(a.learned_from_response(&gone), None);
        let mut req = HeaderMap::new();
        req.insert(COOKIE, HeaderValue::from_static("a=1; JSESSIONID=abc"));
        assert_eq!(a.learned_value(&req).as_deref(), Some("abc"));
        // The request keeps the application's cookie.
        assert_eq!(a.resolve(&mut req, IP, &bs, false), Resolved::default());
        assert!(a.learned_value(&req).is_some());
        let mut r = Resolved::default();
        assert!(a.pin_address(&mut r, "127.0.0.1:4002", &bs, false));
        assert_eq!(r.pinned, Some(2));
        bs[2].stats.up.store(false, Ordering::Relaxed);
        let mut r = Resolved::default();
        assert!(!a.pin_address(&mut r, "127.0.0.1:4002", &bs, false));
        assert!(!a.pin_address(&mut r, "127.0.0.1:9", &bs, false));
        assert_eq!(r, Resolved::default());
    }

    #[test]
    fn secure_follows_https_and_same_site_none() {
        let bs = backends(1);
        let mut s = sticky(true, false, None);
        let a = Affinity::new(&s, "web", &bs);
        let secure = |a: &Affinity, https| {
            let v = a.set_cookie(0, https).expect("cookie");
            v.to_str().expect("text").ends_with("; Secure")
        };
        assert!(secure(&a, true) && !secure(&a, false));
        if let Some(c) = s.cookie.as_mut() {
            c.same_site = SameSite::None;
        }
        assert!(secure(&Affinity::new(&s, "web", &bs), false));
        if let Some(c) = s.cookie.as_mut() {
            (c.same_site, c.secure) = (SameSite::Strict, Some(false));
        }
        assert!(!secure(&Affinity::new(&s, "web", &bs), true));
    }
}
