//! The normal form of a request's authority (`Host`, or an absolute URI's or HTTP/2's
//! `:authority`): `host[:port]` with the host in lower case and without its trailing dot.
//!
//! Refused (400): an empty value, userinfo (`user@host`), lists (`a, b`), a port that is
//! not 1 to 5 digits up to 65535, an IP literal that is not an IPv6 address, and a name
//! that is not dot-separated labels of letters, digits, `-` and `_` (empty labels such as
//! `a..b` or `.a` included), or is longer than 253 characters.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Why a Host (or `:authority`) is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty Host")]
    Empty,
    #[error("userinfo in Host")]
    UserInfo,
    #[error("more than one host in Host")]
    List,
    #[error("invalid port in Host")]
    Port,
    #[error("invalid IP literal in Host")]
    IpLiteral,
    #[error("invalid host name in Host")]
    Name,
}

/// The longest host name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Check a host name (no port) and return its length without the trailing dot and whether
/// it needs lowering.
fn check_name(name: &[u8]) -> Result<(usize, bool), HostError> {
    let trimmed = name.strip_suffix(b".").unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME {
        return Err(HostError::Name);
    }
    let mut upper = false;
    let mut label = 0;
    for &b in trimmed {
        if b == b'.' {
            if label == 0 {
                return Err(HostError::Name);
            }
            label = 0;
        } else if is_name_byte(b) {
            upper |= b.is_ascii_uppercase();
            label += 1;
            if label > 63 {
                return Err(HostError::Name);
            }
        } else {
            return Err(HostError::Name);
        }
    }
    if label == 0 {
        return Err(HostError::Name);
    }
    Ok((trimmed.len(), upper || trimmed.len() != name.len()))
}

/// A route's host (no port): its normal form, or the reason it cannot match any request.
pub fn name(value: &str) -> Result<String, HostError> {
    let (len, _) = check_name(value.as_bytes())?;
    Ok(value[..len].to_ascii_lowercase())
}

/// `:PORT` (or nothing): 1 to 5 digits, at most 65535.
fn check_port(port: &[u8]) -> Result<(), HostError> {
    let Some(digits) = port.strip_prefix(b":") else {
        return if port.is_empty() {
            Ok(())
        } else {
            Err(HostError::Port)
        };
    };
    let ok = (1..=5).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u16>().ok())
            .is_some();
    if ok {
        Ok(())
    } else {
        Err(HostError::Port)
    }
}

/// `a-z 0-9 - _`: the bytes of a host name label in normal form.
static LOWER_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_';
        b += 1;
    }
    t
};

/// `value` when it is a host name already in normal form with an optional valid port (the
/// common case), in one pass; `None` sends everything else to `checked`.
fn already_normal(value: &[u8]) -> Option<&str> {
    let mut label = 0;
    let mut end = value.len();
    for (i, &b) in value.iter().enumerate() {
        if LOWER_NAME[usize::from(b)] {
            label += 1;
            if label > 63 {
                return None;
            }
        } else if b == b'.' && label > 0 {
            label = 0;
        } else if b == b':' {
            end = i;
            break;
        } else {
            return None;
        }
    }
    // Empty, a trailing dot (to be removed), or too long.
    if label == 0 || end > MAX_NAME {
        return None;
    }
    if end < value.len() {
        let digits = &value[end + 1..];
        if digits.is_empty() || digits.len() > 5 {
            return None;
        }
        let mut port = 0u32;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            port = port * 10 + u32::from(d - b'0');
        }
        if port > u32::from(u16::MAX) {
            return None;
        }
    }
    std::str::from_utf8(value).ok()
}

/// The normal form of an authority `value`: borrowed when it already is.
pub fn authority(value: &[u8]) -> Result<Cow<'_, str>, HostError> {
    match already_normal(value) {
        Some(text) => Ok(Cow::Borrowed(text)),
        None => checked(value),
    }
}

/// `authority` for values that are not plainly normal: IP literals, names to lower or to
/// strip of their trailing dot, and every refusal with its reason.
fn checked(value: &[u8]) -> Result<Cow<'_, str>, HostError> {
    if value.is_empty() {
        return Err(HostError::Empty);
    }
    if value.contains(&b'@') {
        return Err(HostError::UserInfo);
    }
    if value.iter().any(|b| matches!(b, b',' | b' ' | b'\t')) {
        return Err(HostError::List);
    }
    let text = std::str::from_utf8(value).map_err(|_| HostError::Name)?;
    if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::IpLiteral)?;
        rest[..end]
            .parse::<Ipv6Addr>()
            .map_err(|_| HostError::IpLiteral)?;
        check_port(&rest.as_bytes()[end + 1..])?;
        return Ok(if rest[..end].bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        });
    }
    let colon = text.find(':').unwrap_or(text.len());
    let (host, port) = text.split_at(colon);
    check_port(port.as_bytes())?;
    let (len, changed) = check_name(host.as_bytes())?;
    if !changed {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = host[..len].to_ascii_lowercase();
    out.push_str(port);
    Ok(Cow::Owned(out))
}

/// The host of a normal authority, without its port (and without the brackets of an IPv6
/// literal).
pub fn without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    authority.split_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &str) -> Result<String, HostError> {
        authority(v.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn normal_hosts_are_borrowed() {
        for h in [
            "admin.example",
            "a",
            "a-b_c.example:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(
                matches!(authority(h.as_bytes()), Ok(Cow::Borrowed(_))),
                "{h}"
            );
        }
    }

    #[test]
    fn case_and_trailing_dot_are_normalized() {
        for (input, want) in [
            ("ADMIN.example", "admin.example"),
            ("admin.example.", "admin.example"),
            ("Admin.Example.:8080", "admin.example:8080"),
            ("[2001:DB8::1]:80", "[2001:db8::1]:80"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for (input, why) in [
            ("", HostError::Empty),
            ("user@admin.example", HostError::UserInfo),
            ("user:pw@admin.example:80", HostError::UserInfo),
            ("admin.example, evil", HostError::List),
            ("admin.example,evil", HostError::List),
            ("admin.example:", HostError::Port),
            ("admin.example:99999", HostError::Port),
            ("admin.example:80:80", HostError::Port),
            ("admin.example:8a", HostError::Port),
            ("admin..example", HostError::Name),
            (".admin.example", HostError::Name),
            ("admin.example..", HostError::Name),
            (".", HostError::Name),
            ("admin.example/x", HostError::Name),
            ("admin%2eexample", HostError::Name),
            ("caf\u{e9}.example", HostError::Name),
            ("[::1", HostError::IpLiteral),
            ("[v1.x]", HostError::IpLiteral),
            ("[fe80::1%25eth0]", HostError::IpLiteral),
            ("[::1]x", HostError::Port),
        ] {
            assert_eq!(norm(input), Err(why), "{input:?}");
        }
        assert_eq!(norm(&"a".repeat(64)), Err(HostError::Name));
        assert_eq!(
            norm(&format!("{}.example", "a.".repeat(130))),
            Err(HostError::Name)
        );
    }

    /// The one-pass check never accepts what the full one would change or refuse.
    #[test]
    fn the_fast_path_agrees_with_the_full_check() {
        let parts = [
            "a", "Z", "0", "-", "_", ".", ":", "8", "65535", "65536", "@", ",", "[", "]",
        ];
        let mut value = String::new();
        for n in 0..20_000u32 {
            value.clear();
            let mut k = n;
            while k > 0 {
                value.push_str(parts[(k % parts.len() as u32) as usize]);
                k /= parts.len() as u32;
            }
            if let Some(fast) = already_normal(value.as_bytes()) {
                assert_eq!(
                    checked(value.as_bytes()),
                    Ok(Cow::Borrowed(fast)),
                    "{value:?}"
                );
            }
        }
        assert!(already_normal(&[b'a'; 64]).is_none());
        assert!(already_normal(format!("{}a", "a.".repeat(127)).as_bytes()).is_none());
    }

    #[test]
    fn ports_come_off() {
        assert_eq!(without_port("a.example:80"), "a.example");
        assert_eq!(without_port("a.example"), "a.example");
        assert_eq!(without_port("[::1]:80"), "::1");
        assert_eq!(without_port("[::1]"), "::1");
    }

    #[test]
    fn route_names() {
        assert_eq!(name("API.Example.").as_deref(), Ok("api.example"));
        assert!(name("a b").is_err() && name("a:1").is_err() && name("").is_err());
    }
}
