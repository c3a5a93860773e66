//! Cache keys: the primary key of a request (scheme, authority, path and query; HEAD shares
//! GET's) and the secondary key of a response's `Vary` (the named request fields, in a
//! normal form so that equivalent requests share one stored response).

use http::header::HeaderName;
use http::HeaderMap;

/// What identifies a stored resource, and what purges match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Primary {
    /// `https://example.com:8443/a?b` (scheme and authority in lower case).
    pub key: String,
    /// The host without its port (purge by host).
    pub host: String,
    /// The path and query as requested (purge by URL and path prefix).
    pub path_and_query: String,
}

impl Primary {
    pub fn new(https: bool, authority: &str, path_and_query: &str) -> Primary {
        let authority = authority.to_ascii_lowercase();
        let host = crate::uri::host::without_port(&authority).to_string();
        let scheme = if https { "https" } else { "http" };
        Primary {
            key: format!("{scheme}://{authority}{path_and_query}"),
            host,
            path_and_query: path_and_query.to_string(),
        }
    }
}

/// The field names a response's `Vary` lists, lower case, sorted, without duplicates.
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The request's values of `names`, normalized (RFC 9111 4.1): the field lines combined,
/// list members trimmed, and compared case-insensitively where their syntax is (the
/// Accept family, whose members are also put in order).
pub fn vary_values(names: &[HeaderName], request: &HeaderMap) -> Vec<Option<String>> {
    names
        .iter()
        .map(|name| {
            let mut values = request.get_all(name).iter().peekable();
            values.peek()?;
            let mut members: Vec<String> = values
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|m| !m.is_empty())
                .collect();
            let n = name.as_str();
            if n.starts_with("accept") {
                for m in &mut members {
                    m.make_ascii_lowercase();
                    *m = m.replace(" ;", ";").replace("; ", ";");
                }
                members.sort();
                members.dedup();
            }
            Some(members.join(","))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn primary_keys_keep_scheme_and_port() {
        let p = Primary::new(true, "Example.COM:8443", "/a?b");
        assert_eq!(p.key, "https://example.com:8443/a?b");
        assert_eq!(p.host, "example.com");
        assert_ne!(
            Primary::new(false, "example.com", "/").key,
            Primary::new(true, "example.com", "/").key
        );
    }

    #[test]
    fn vary_is_normalized() {
        let mut resp = HeaderMap::new();
        resp.append(
            "vary",
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        resp.append("vary", HeaderValue::from_static("accept-encoding"));
        let names = vary_names(&resp);
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", HeaderValue::from_static("gzip,  BR"));
        let mut b = HeaderMap::new();
        b.append("accept-encoding", HeaderValue::from_static("br"));
        b.append("accept-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(vary_values(&names, &a), vary_values(&names, &b));
        assert_eq!(vary_values(&names, &a)[1], None);
        let mut c = HeaderMap::new();
        c.insert("accept-encoding", HeaderValue::from_static("gzip"));
        assert_ne!(vary_values(&names, &a), vary_values(&names, &c));
    }
}
