//! The normal form of a request path (RFC 3986 6.2.2 and 5.2.4), in one pass:
//!
//! 1. percent-encodings are checked (`%` and two hex digits, else 400); those of unreserved
//!    characters (`A-Z a-z 0-9 - . _ ~`) are decoded, the others are written in upper case;
//!    `%00` is refused;
//! 2. `%2F`, `%5C` and a raw `\` follow the policy's `escaped_slashes` (reject, keep encoded,
//!    or decode to a separator); bytes outside ASCII are percent-encoded;
//! 3. repeated slashes are merged (`merge_slashes`), except a trailing one;
//! 4. dot segments (`.`, `..`, also spelled `%2e`) are removed; a `..` above the root is
//!    refused, and so is a dot segment carrying parameters (`..;x`), which some servers
//!    read as `..`.
//!
//! The query is not part of the path and is never touched. The result is idempotent:
//! normalizing a normal path returns it unchanged, borrowed.

use std::borrow::Cow;

use super::{EscapedSlashes, Policy};

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("invalid percent-encoding in the path")]
    InvalidEscape,
    #[error("encoded NUL in the path")]
    Nul,
    #[error("encoded slash or backslash in the path")]
    EscapedSlash,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("dot segment with parameters in the path")]
    DotParameters,
}

/// The normal form of `path` (which must start with `/`): borrowed when it already is.
pub fn normalize<'a>(path: &'a str, policy: &Policy) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes, policy) {
        return Ok(Cow::Borrowed(path));
    }
    rewrite(bytes, policy).map(Cow::Owned)
}

/// The bytes `is_normal` looks at: `%`, `\\`, `/` and everything outside ASCII.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b >= 0x80 || b == b'%' as usize || b == b'\\' as usize || b == b'/' as usize;
        b += 1;
    }
    t
};

/// Whether `bytes` is in normal form already: one scan, no allocation (a table lookup per
/// byte; only `%`, `\\`, `/` and non-ASCII bytes take a closer look).
fn is_normal(bytes: &[u8], policy: &Policy) -> bool {
    let ends_segment = |i: usize| matches!(bytes.get(i), None | Some(b'/' | b';'));
    for (i, &b) in bytes.iter().enumerate() {
        if !SPECIAL[usize::from(b)] {
            continue;
        }
        match b {
            b'%' => {
                // Normal: upper-case hex of a byte that stays encoded.
                let (Some(hi), Some(lo)) =
                    (upper_hex(bytes.get(i + 1)), upper_hex(bytes.get(i + 2)))
                else {
                    return false;
                };
                let v = hi << 4 | lo;
                let slash = v == b'/' || v == b'\\';
                if v == 0
                    || is_unreserved(v)
                    || (slash && policy.escaped_slashes != EscapedSlashes::Keep)
                {
                    return false;
                }
            }
            b'/' => match bytes.get(i + 1) {
                Some(b'/') if policy.merge_slashes => return false,
                Some(b'.')
                    if ends_segment(i + 2)
                        || (bytes.get(i + 2) == Some(&b'.') && ends_segment(i + 3)) =>
                {
                    return false;
                }
                _ => {}
            },
            _ => return false, // a backslash or a byte outside ASCII
        }
    }
    true
}

/// An upper-case hex digit's value (what the normal form writes).
fn upper_hex(b: Option<&u8>) -> Option<u8> {
    match b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn unhex(b: Option<&u8>) -> Option<u8> {
    match b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// What a decoded slash or backslash does under `policy`: `Ok(true)` ends the segment.
fn escaped_slash(out: &mut String, b: u8, policy: &Policy) -> Result<bool, PathError> {
    match policy.escaped_slashes {
        EscapedSlashes::Reject => Err(PathError::EscapedSlash),
        EscapedSlashes::Keep => {
            push_escaped(out, b);
            Ok(false)
        }
        EscapedSlashes::Decode => Ok(true),
    }
}

/// The full rewrite, segment by segment into a new string (only ASCII is ever pushed).
fn rewrite(bytes: &[u8], policy: &Policy) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut i = 1; // past the leading '/'
    loop {
        out.push('/');
        let start = out.len();
        // Copy one segment, normalized, up to a separator (`last` stays true at the end).
        let mut last = true;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'/' => {
                    i += 1;
                    last = false;
                    break;
                }
                b'%' => {
                    let (hi, lo) = (unhex(bytes.get(i + 1)), unhex(bytes.get(i + 2)));
                    let (Some(hi), Some(lo)) = (hi, lo) else {
                        return Err(PathError::InvalidEscape);
                    };
                    i += 3;
                    let v = hi << 4 | lo;
                    if is_unreserved(v) {
                        out.push(v as char);
                    } else if v == 0 {
                        return Err(PathError::Nul);
                    } else if v == b'/' || v == b'\\' {
                        if escaped_slash(&mut out, v, policy)? {
                            last = false;
                            break;
                        }
                    } else {
                        push_escaped(&mut out, v);
                    }
                }
                b'\\' => {
                    i += 1;
                    if escaped_slash(&mut out, b, policy)? {
                        last = false;
                        break;
                    }
                }
                0x80.. => {
                    i += 1;
                    push_escaped(&mut out, b);
                }
                _ => {
                    i += 1;
                    out.push(b as char);
                }
            }
        }
        let segment = &out.as_bytes()[start..];
        let name = segment.split(|c| *c == b';').next().unwrap_or_default();
        let dots = match name {
            b"." => 1,
            b".." => 2,
            _ => 0,
        };
        if dots > 0 && name.len() != segment.len() {
            return Err(PathError::DotParameters);
        }
        let empty = segment.is_empty() && policy.merge_slashes && !last;
        if dots > 0 || empty {
            out.truncate(start - 1);
        }
        if dots == 2 {
            let parent = out.rfind('/').ok_or(PathError::AboveRoot)?;
            out.truncate(parent);
        }
        if last {
            if dots > 0 {
                out.push('/');
            }
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(escaped_slashes: EscapedSlashes, merge_slashes: bool) -> Policy {
        Policy {
            merge_slashes,
            escaped_slashes,
            forward_original: false,
        }
    }

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, &Policy::default()).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a;b=c/d",
            "/..x/.x/x./x..",
            "/a.b~c_d-e",
            "/x{y}|\"^[]",
            "/...",
            "/a%3Bb/caf%C3%A9/%25",
        ] {
            assert!(
                matches!(normalize(p, &Policy::default()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
        assert!(matches!(
            normalize("//a", &with(EscapedSlashes::Reject, false)),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/a%2Fb%5C", &with(EscapedSlashes::Keep, true)),
            Ok(Cow::Borrowed(_))
        ));
        for p in [
            "/a%3bb", "/%41", "/a//b", "/a/./b", "/a/..", "/x\\", "/\u{e9}",
        ] {
            assert!(
                matches!(normalize(p, &Policy::default()), Ok(Cow::Owned(_)) | Err(_)),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        for (input, want) in [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/.", "/"),
            ("/./", "/"),
            ("/a/..", "/"),
            ("/x/../admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/x/%2e%2e/admin/x", "/admin/x"),
            ("/x/.%2E/admin", "/admin"),
            ("/a/b/c/../../d", "/a/d"),
            ("/a/..x/..", "/a/"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
        for above in ["/..", "/../a", "/a/../..", "/%2e%2e/", "/a/./../../b"] {
            assert_eq!(norm(above), Err(PathError::AboveRoot), "{above}");
        }
        for params in ["/a/..;/b", "/a/.;x/b", "/%2e%2e;x", "/a/..;"] {
            assert_eq!(norm(params), Err(PathError::DotParameters), "{params}");
        }
    }

    #[test]
    fn escapes_are_decoded_or_uppercased() {
        for (input, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/%7e%5F%2d%30", "/~_-0"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/%2561", "/%2561"),
            ("/%C0%AE%C0%AE/x", "/%C0%AE%C0%AE/x"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["/%", "/%4", "/%zz", "/a%g0", "/%%41"] {
            assert_eq!(norm(bad), Err(PathError::InvalidEscape), "{bad}");
        }
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(norm("//admin//x//").as_deref(), Ok("/admin/x/"));
        assert_eq!(norm("/a//../b").as_deref(), Ok("/b"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
        let keep = with(EscapedSlashes::Reject, false);
        let n = |p| normalize(p, &keep).map(Cow::into_owned);
        assert_eq!(n("//a//b").as_deref(), Ok("//a//b"));
        assert_eq!(n("/a//../b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a/%2e//b").as_deref(), Ok("/a//b"));
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        for p in ["/admin%2fx", "/a%5Cb", "/a\\b", "/a%2F..%2Fb"] {
            assert_eq!(norm(p), Err(PathError::EscapedSlash), "{p}");
        }
        let keep = with(EscapedSlashes::Keep, true);
        let k = |p| normalize(p, &keep).map(Cow::into_owned);
        assert_eq!(k("/admin%2fx").as_deref(), Ok("/admin%2Fx"));
        assert_eq!(k("/a\\..\\b").as_deref(), Ok("/a%5C..%5Cb"));
        assert_eq!(k("/a/..%2F").as_deref(), Ok("/a/..%2F"));
        let decode = with(EscapedSlashes::Decode, true);
        let d = |p| normalize(p, &decode).map(Cow::into_owned);
        assert_eq!(d("/admin%2fx").as_deref(), Ok("/admin/x"));
        assert_eq!(d("/public\\..\\admin").as_deref(), Ok("/admin"));
        assert_eq!(d("/a%2F%2e%2e%2Fb%5c").as_deref(), Ok("/b/"));
        assert_eq!(d("/%2F%2F").as_deref(), Ok("/"));
        assert_eq!(d("/a%2F"), Ok("/a/".to_string()));
        assert_eq!(d("/%2F..%2F.."), Err(PathError::AboveRoot));
    }

    #[test]
    fn other_forms_are_not_paths() {
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        let policies = [
            Policy::default(),
            with(EscapedSlashes::Keep, true),
            with(EscapedSlashes::Decode, true),
            with(EscapedSlashes::Keep, false),
            with(EscapedSlashes::Decode, false),
        ];
        for p in [
            "/a/./b//c/../%2e%2E/%41%2f%5c\\x/",
            "//..//a",
            "/a/%2F..%2F..",
            "/%c3%A9/\u{263a}/.",
        ] {
            for policy in &policies {
                if let Ok(once) = normalize(p, policy) {
                    let twice = normalize(&once, policy);
                    assert!(
                        matches!(twice, Ok(Cow::Borrowed(t)) if t == once),
                        "{p} under {policy:?}: {once} then {twice:?}"
                    );
                }
            }
        }
    }
}
