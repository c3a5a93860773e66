//! DNS-rebinding guard of the admin API: a request's Host must name the admin by an IP
//! literal or a single-label name (`localhost`, `admin`: not resolvable through public DNS),
//! or be one of the names in `AUTOLB_ADMIN_HOSTS` (comma-separated); others get 421. A page
//! on another site that rebinds its domain to 127.0.0.1 thus never reaches an endpoint, and
//! the admin API sends no CORS headers either.

use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::HOST;
use http::Request;

/// Extra host names the admin answers to (from `AUTOLB_ADMIN_HOSTS`).
fn extra_hosts() -> &'static [String] {
    static HOSTS: OnceLock<Vec<String>> = OnceLock::new();
    HOSTS.get_or_init(|| {
        std::env::var("AUTOLB_ADMIN_HOSTS")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    })
}

/// The host part of a Host value (`[::1]:9001` -> `::1`, `a:1` -> `a`).
fn host_part(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    value.rsplit_once(':').map_or(value, |(h, _)| h)
}

/// Whether a request with this Host (or none: HTTP/1.0) may use the admin API.
pub(crate) fn host_allowed(host: Option<&str>) -> bool {
    let Some(value) = host else {
        return true;
    };
    let host = host_part(value.trim()).to_ascii_lowercase();
    host.parse::<IpAddr>().is_ok()
        || (!host.is_empty() && !host.contains('.'))
        || extra_hosts().contains(&host)
}

/// Check a request: `false` when its Host is not allowed (or not readable, or repeated).
pub(crate) fn allowed<B>(req: &Request<B>) -> bool {
    let mut all = req.headers().get_all(HOST).iter();
    let first = all.next();
    if all.next().is_some() {
        return false;
    }
    match first {
        None => host_allowed(req.uri().host()),
        Some(v) => v.to_str().is_ok_and(|s| host_allowed(Some(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn ip_literals_and_localhost_only() {
        for ok in [
            "127.0.0.1:9001",
            "[::1]:9001",
            "localhost:9001",
            "admin",
            "LOCALHOST",
            "10.1.2.3",
        ] {
            assert!(host_allowed(Some(ok)), "{ok}");
        }
        assert!(host_allowed(None));
        for bad in [
            "evil.example:9001",
            "127.0.0.1.nip.io",
            "localhost.evil",
            "",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad}");
        }
    }
}
