//! `sticky:` -> `model::Sticky`: the affinity cookie (name, ttl, path, same_site, secure) and
//! the hashed keys for clients without it (`source_ip`, `header`), and the learned
//! application cookie (`learn_cookie`, `learn_ttl`).

use std::time::Duration;

use super::error::Issues;
use super::file::{CookieFile, StickyFile};
use super::model::{LearnCookie, SameSite, Sticky, StickyCookie};
use super::node::Located;
use super::pool::{is_token, nonzero_dur};

/// The cookie name used when `sticky.cookie.name` is not given.
pub const DEFAULT_COOKIE: &str = "AUTOLB_SID";

pub(crate) fn sticky(located: &Located<StickyFile>, issues: &mut Issues) -> Sticky {
    let file = &located.value;
    let source_ip = file.source_ip.as_ref().is_some_and(|s| s.value);
    let header = file.header.as_ref().and_then(|h| {
        let name = h.value.trim();
        if is_token(name) {
            Some(name.to_ascii_lowercase())
        } else {
            issues.push(h.pos, format!("invalid sticky header name \"{}\"", h.value));
            None
        }
    });
    let learn_cookie = learn_cookie(file, issues);
    let cookie = match &file.cookie {
        Some(c) => Some(cookie(&c.value, issues)),
        // `sticky: {}` means the default cookie.
        None if file.source_ip.is_none()
            && file.header.is_none()
            && file.learn_cookie.is_none() =>
        {
            Some(cookie(&CookieFile::default(), issues))
        }
        None => None,
    };
    if cookie.is_none()
        && !source_ip
        && header.is_none()
        && file.header.is_none()
        && file.learn_cookie.is_none()
    {
        let at = file.source_ip.as_ref().map_or(located.pos, |s| s.pos);
        issues.push(
            at,
            "sticky needs a cookie, source_ip: true, a header or learn_cookie (or remove sticky)",
        );
    }
    Sticky {
        cookie,
        source_ip,
        header,
        learn_cookie,
    }
}

/// `learn_cookie: NAME` (a cookie name) and `learn_ttl` (default 1h, at least 1s).
fn learn_cookie(file: &StickyFile, issues: &mut Issues) -> Option<LearnCookie> {
    let Some(n) = &file.learn_cookie else {
        if let Some(t) = &file.learn_ttl {
            issues.push(t.pos, "sticky learn_ttl needs learn_cookie");
        }
        return None;
    };
    let name = n.value.trim();
    if !is_token(name) {
        issues.push(n.pos, format!("invalid learn_cookie name \"{}\"", n.value));
        return None;
    }
    let ttl = nonzero_dur(
        &file.learn_ttl,
        Duration::from_secs(3600),
        "sticky learn_ttl",
        issues,
    );
    if let Some(t) = file
        .learn_ttl
        .as_ref()
        .filter(|t| !t.value.0.is_zero() && t.value.0 < Duration::from_secs(1))
    {
        issues.push(t.pos, "sticky learn_ttl must be at least 1s");
    }
    Some(LearnCookie {
        name: name.to_string(),
        ttl,
    })
}

fn cookie(file: &CookieFile, issues: &mut Issues) -> StickyCookie {
    let name = match &file.name {
        Some(n) if !is_token(n.value.trim()) => {
            issues.push(n.pos, format!("invalid cookie name \"{}\"", n.value));
            DEFAULT_COOKIE.to_string()
        }
        Some(n) => n.value.trim().to_string(),
        None => DEFAULT_COOKIE.to_string(),
    };
    let ttl = nonzero_dur(
        &file.ttl,
        Duration::from_secs(3600),
        "sticky cookie ttl",
        issues,
    );
    if let Some(t) = file
        .ttl
        .as_ref()
        .filter(|t| t.value.0 < Duration::from_secs(1))
    {
        if !t.value.0.is_zero() {
            issues.push(t.pos, "sticky cookie ttl must be at least 1s");
        }
    }
    let path = match &file.path {
        Some(p) if !valid_path(&p.value) => {
            issues.push(
                p.pos,
                format!(
                    "invalid cookie path \"{}\": must start with / and hold no ';', spaces or control characters",
                    p.value
                ),
            );
            "/".to_string()
        }
        Some(p) => p.value.clone(),
        None => "/".to_string(),
    };
    let same_site = match &file.same_site {
        None => SameSite::Lax,
        Some(s) => match s.value.trim().to_ascii_lowercase().as_str() {
            "lax" => SameSite::Lax,
            "strict" => SameSite::Strict,
            "none" => SameSite::None,
            _ => {
                issues.push(
                    s.pos,
                    format!(
                        "unknown same_site \"{}\", expected one of: lax, strict, none",
                        s.value
                    ),
                );
                SameSite::Lax
            }
        },
    };
    let secure = file.secure.as_ref().map(|s| s.value);
    if let (SameSite::None, Some(s)) = (same_site, file.secure.as_ref()) {
        if !s.value {
            issues.push(
                s.pos,
                "same_site: none needs Secure (browsers drop the cookie otherwise)",
            );
        }
    }
    StickyCookie {
        name,
        ttl,
        path,
        same_site,
        secure,
    }
}

/// A cookie Path attribute value: absolute, no separator, no whitespace or controls.
fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, load};
    use super::super::tests_errors::with_pool;
    use super::*;

    fn sticky_of(yaml: &str) -> Sticky {
        let c = load(yaml).unwrap_or_else(|e| panic!("{e}"));
        c.pools[0].sticky.clone().expect("sticky")
    }

    #[test]
    fn hashed_keys_alone_need_no_cookie() {
        let s = sticky_of(&with_pool("    sticky: { source_ip: true }\n"));
        assert_eq!((s.cookie, s.source_ip, s.header), (None, true, None));
        let s = sticky_of(&with_pool("    sticky: { header: X-User }\n"));
        assert_eq!(s.header.as_deref(), Some("x-user"));
        assert!(s.cookie.is_none());
        let s = sticky_of(&with_pool(
            "    sticky: { cookie: { same_site: none }, header: X-User }\n",
        ));
        let c = s.cookie.expect("cookie");
        assert_eq!(
            (c.name.as_str(), c.same_site),
            (DEFAULT_COOKIE, SameSite::None)
        );
    }

    #[test]
    fn learned_cookies_need_no_affinity_cookie() {
        let s = sticky_of(&with_pool("    sticky: { learn_cookie: JSESSIONID }\n"));
        assert!(s.cookie.is_none() && !s.source_ip && s.header.is_none());
        assert_eq!(
            s.learn_cookie,
            Some(LearnCookie {
                name: "JSESSIONID".into(),
                ttl: Duration::from_secs(3600)
            })
        );
        let s = sticky_of(&with_pool(
            "    sticky: { learn_cookie: sid, learn_ttl: 30m, source_ip: true }\n",
        ));
        let l = s.learn_cookie.expect("learned");
        assert_eq!((l.name.as_str(), l.ttl), ("sid", Duration::from_secs(1800)));
        assert!(s.source_ip && s.cookie.is_none());
    }

    #[test]
    fn bad_sticky_settings_are_located() {
        let yaml = with_pool("    sticky: { cookie: { same_site: loose } }\n");
        assert_error(&yaml, "loose", "unknown same_site \"loose\"");
        let yaml = with_pool("    sticky: { cookie: { path: app } }\n");
        assert_error(&yaml, "app }", "invalid cookie path \"app\"");
        let yaml = with_pool("    sticky: { cookie: { name: \"a b\" } }\n");
        assert_error(&yaml, "\"a b\"", "invalid cookie name");
        let yaml = with_pool("    sticky: { cookie: { ttl: 0s } }\n");
        assert_error(&yaml, "0s", "sticky cookie ttl must be greater than 0");
        let yaml = with_pool("    sticky: { cookie: { same_site: none, secure: false } }\n");
        assert_error(&yaml, "false", "same_site: none needs Secure");
        let yaml = with_pool("    sticky: { header: \"x y\" }\n");
        assert_error(&yaml, "\"x y\"", "invalid sticky header name");
        let yaml = with_pool("    sticky: { source_ip: false }\n");
        assert_error(&yaml, "false", "sticky needs a cookie");
        let yaml = with_pool("    sticky: { learn_cookie: \"J SESSION\" }\n");
        assert_error(&yaml, "\"J SESSION\"", "invalid learn_cookie name");
        let yaml = with_pool("    sticky: { learn_cookie: JSESSIONID, learn_ttl: 0s }\n");
        assert_error(&yaml, "0s", "sticky learn_ttl must be greater than 0");
        let yaml = with_pool("    sticky: { learn_cookie: JSESSIONID, learn_ttl: 10ms }\n");
        assert_error(&yaml, "10ms", "sticky learn_ttl must be at least 1s");
        let yaml = with_pool("    sticky: { source_ip: true, learn_ttl: 5m }\n");
        assert_error(&yaml, "5m", "sticky learn_ttl needs learn_cookie");
        let yaml = with_pool("    sticky: { cookie: { domain: x } }\n");
        assert_error(&yaml, "domain", "unknown field \"domain\"");
        let yaml = with_pool("    timeouts: { websocket_idle: 0s }\n");
        assert_error(
            &yaml,
            "0s",
            "timeouts.websocket_idle must be greater than 0",
        );
    }
}
