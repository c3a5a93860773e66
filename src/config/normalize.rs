//! `listeners[].normalize:` (how request paths are put in normal form before routing) and the
//! checks that keep `routes[].path_prefix` and `routes[].host` matchable: a prefix must be
//! in normal form itself, a host a valid name.

use serde::Deserialize;

use super::error::{Issues, Pos};
use super::file::ListenerFile;
use super::model::Protocol;
use super::node::Located;
use crate::uri::{self, EscapedSlashes, Policy};

/// `normalize:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a normalize mapping (merge_slashes, escaped_slashes, forward_original)"
)]
pub struct NormalizeFile {
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<EscapedSlashesFile>,
    pub forward_original: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashesFile {
    Reject,
    Keep,
    Decode,
}

/// A listener's policy (the defaults without `normalize:`); only http and https listeners
/// have one.
pub(crate) fn listener_normalize(
    file: &ListenerFile,
    protocol: Protocol,
    issues: &mut Issues,
) -> Policy {
    let Some(n) = &file.normalize else {
        return Policy::default();
    };
    if protocol == Protocol::Tcp {
        issues.push(
            n.pos,
            format!(
                "normalize is only allowed on http and https listeners (listener \"{}\")",
                file.name.value.trim()
            ),
        );
    }
    let defaults = Policy::default();
    Policy {
        merge_slashes: n.value.merge_slashes.unwrap_or(defaults.merge_slashes),
        escaped_slashes: match n.value.escaped_slashes {
            None => defaults.escaped_slashes,
            Some(EscapedSlashesFile::Reject) => EscapedSlashes::Reject,
            Some(EscapedSlashesFile::Keep) => EscapedSlashes::Keep,
            Some(EscapedSlashesFile::Decode) => EscapedSlashes::Decode,
        },
        forward_original: n
            .value
            .forward_original
            .unwrap_or(defaults.forward_original),
    }
}

/// A route's `path_prefix`: it must be in the normal form requests are compared in (else it
/// could never match, or would match less than it says); the message gives that form.
pub(crate) fn path_prefix(prefix: &Located<String>, issues: &mut Issues) {
    let p = &prefix.value;
    if !p.starts_with('/') {
        issues.push(
            prefix.pos,
            format!("path_prefix must start with \"/\", got \"{p}\""),
        );
        return;
    }
    // The most permissive policy that still rewrites: encoded slashes stay as written (a
    // prefix with `%2F` matches on listeners with `escaped_slashes: keep`).
    let keep = Policy {
        escaped_slashes: EscapedSlashes::Keep,
        ..Policy::default()
    };
    match uri::path::normalize(p, &keep) {
        Ok(n) if n == p.as_str() => {}
        Ok(n) => issues.push(
            prefix.pos,
            format!(
                "path_prefix \"{p}\" is not in normal form, so requests (normalized before \
                 routing) would never match it as written; write \"{n}\""
            ),
        ),
        Err(e) => issues.push(prefix.pos, format!("invalid path_prefix \"{p}\": {e}")),
    }
}

/// A route's `host`: a host name without port, `*.` for any subdomain; its normal form
/// (lower case, no trailing dot).
pub(crate) fn route_host(value: &str, pos: Pos, issues: &mut Issues) -> String {
    let host = value.trim();
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => ("*.", rest),
        None => ("", host),
    };
    match uri::host::name(name) {
        Ok(n) => format!("{wild}{n}"),
        Err(_) => {
            issues.push(
                pos,
                format!("invalid route host \"{value}\" (a host name without port, or *.NAME)"),
            );
            host.to_ascii_lowercase()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(yaml: &str) -> String {
        match crate::config::load_str(yaml, Path::new("t.yaml")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    const POOLS: &str = "pools:\n  web:\n    backends: [{ address: \"127.0.0.1:9\" }]\n";

    #[test]
    fn policy_defaults_and_values() {
        let yaml = format!(
            "listeners:\n  - {{ name: a, listen: \"127.0.0.1:1\", pool: web }}\n  - {{ name: b, listen: \"127.0.0.1:2\", pool: web, normalize: {{ merge_slashes: false, escaped_slashes: decode, forward_original: true }} }}\n{POOLS}"
        );
        let c = crate::config::load_str(&yaml, Path::new("t.yaml")).expect("valid");
        assert_eq!(c.listeners[0].normalize, crate::uri::Policy::default());
        let b = c.listeners[1].normalize;
        assert!(!b.merge_slashes && b.forward_original);
        assert_eq!(b.escaped_slashes, crate::uri::EscapedSlashes::Decode);
    }

    #[test]
    fn bad_values_are_errors_at_their_line() {
        let yaml = format!(
            "listeners:\n  - {{ name: a, listen: \"127.0.0.1:1\", pool: web, normalize: {{ escaped_slashes: allow }} }}\n  - {{ name: t, listen: \"127.0.0.1:2\", protocol: tcp, pool: web, normalize: {{}} }}\n  - {{ name: c, listen: \"127.0.0.1:3\", pool: web, normalize: {{ merge: true }} }}\n{POOLS}"
        );
        let e = errors(&yaml);
        assert!(e.contains("t.yaml:2:") && e.contains("allow"), "{e}");
        assert!(
            e.contains("t.yaml:3:") && e.contains("only allowed on http"),
            "{e}"
        );
        assert!(
            e.contains("t.yaml:4:") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn prefixes_must_be_normal() {
        let route = |p: &str| {
            errors(&format!(
                "listeners:\n  - {{ name: a, listen: \"127.0.0.1:1\", pool: web }}\nroutes:\n  - {{ path_prefix: \"{p}\", pool: web }}\n{POOLS}"
            ))
        };
        for ok in ["/", "/admin", "/api/v1/", "/caf%C3%A9", "/a%2Fb", "/a;b"] {
            assert_eq!(route(ok), "", "{ok}");
        }
        for (bad, says) in [
            ("/a/../b", "write \"/b\""),
            ("//admin", "write \"/admin\""),
            ("/%61dmin", "write \"/admin\""),
            ("/caf%c3%a9", "write \"/caf%C3%A9\""),
            ("/caf\u{e9}", "write \"/caf%C3%A9\""),
            ("/a\\\\b", "write \"/a%5Cb\""),
            ("/..", "climbs above the root"),
            ("/%zz", "invalid percent-encoding"),
            ("admin", "must start with"),
        ] {
            let e = route(bad);
            assert!(e.contains("t.yaml:4:") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn route_hosts_are_normalized_or_refused() {
        let route = |h: &str| {
            crate::config::load_str(
                &format!(
                    "listeners:\n  - {{ name: a, listen: \"127.0.0.1:1\", pool: web }}\nroutes:\n  - {{ host: \"{h}\", pool: web }}\n{POOLS}"
                ),
                Path::new("t.yaml"),
            )
        };
        let host = |h: &str| route(h).expect("valid").routes[0].host.clone();
        assert_eq!(host("Admin.Example.").as_deref(), Some("admin.example"));
        assert_eq!(host("*.Example.COM").as_deref(), Some("*.example.com"));
        for bad in ["a b", "a:80", "user@a", "a..b", "", "*."] {
            assert!(route(bad).is_err(), "{bad}");
        }
    }
}
