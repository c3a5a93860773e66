//! `listeners[].limits:` (sizes, counts, timeouts and the request-body rate a client may
//! use) and the per-client-IP `rate_limit: {per_ip, burst}` of listeners and routes, with
//! safe defaults, every error at its line.

use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::{Dur, StrOrInt};
use super::node::Located;

/// What one client connection and its requests may use (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The request target (URI) in bytes; longer gets 414.
    pub max_request_line: usize,
    /// The whole request head in bytes (hyper's read buffer); larger gets 431.
    pub max_header_bytes: usize,
    /// What a response body read from a backend may hold per client stream: reads are at
    /// most half of it (one being taken by the client, one being filled). Bounds the memory
    /// of a slow reader; more buys throughput per stream.
    pub response_buffer: usize,
    /// Header fields per request; more gets 431.
    pub max_headers: usize,
    /// Request body in bytes: a larger Content-Length gets 413, a longer chunked body is cut.
    pub max_body: u64,
    /// The longest wait for a complete request head (slowloris); `None`: the idle timeout.
    pub header_timeout: Option<Duration>,
    /// Requests on one HTTP/1 connection before it is closed (`Connection: close`); 0 = no
    /// limit (the default: a keep-alive connection costs no more per request than new ones).
    pub max_requests_per_connection: u64,
    /// Open client connections on the listener (over all workers); more are closed at once.
    pub max_connections: usize,
    /// Open client connections per client IP; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Request bodies: waiting this long for the client is free (the grace) ...
    pub body_timeout: Duration,
    /// ... then each byte received buys `1/min_body_rate` s more waiting; a client that
    /// falls behind gets 408. Bytes per second; 0 = no body-rate check.
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_header_bytes: 64 * 1024,
            response_buffer: 64 * 1024,
            max_headers: 100,
            max_body: 1 << 30,
            header_timeout: None,
            max_requests_per_connection: 0,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            body_timeout: Duration::from_secs(20),
            min_body_rate: 500,
        }
    }
}

/// `limits:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a limits mapping (max_body, max_headers, ...)"
)]
pub struct LimitsFile {
    pub max_request_line: Option<Located<StrOrInt>>,
    pub max_header_bytes: Option<Located<StrOrInt>>,
    pub response_buffer: Option<Located<StrOrInt>>,
    pub max_headers: Option<Located<u64>>,
    pub max_body: Option<Located<StrOrInt>>,
    pub header_timeout: Option<Located<Dur>>,
    pub max_requests_per_connection: Option<Located<u64>>,
    pub max_connections: Option<Located<u64>>,
    pub max_connections_per_ip: Option<Located<u64>>,
    pub body_timeout: Option<Located<Dur>>,
    pub min_body_rate: Option<Located<StrOrInt>>,
}

/// A per-client-IP token bucket of a listener or a route (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct IpRateLimit {
    /// Requests per second per client IP.
    pub per_ip: f64,
    /// Requests one IP may send at once.
    pub burst: u32,
}

/// `rate_limit:` on a listener or a route, as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate_limit mapping (per_ip, burst)"
)]
pub struct IpRateLimitFile {
    pub per_ip: Option<Located<StrOrInt>>,
    pub burst: Option<Located<u32>>,
}

/// `1234`, `64KiB`, `10MB`, `1GiB`, `512k` ... into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn size(
    field: &Option<Located<StrOrInt>>,
    min: u64,
    max: u64,
    what: &str,
    issues: &mut Issues,
) -> Option<u64> {
    let f = field.as_ref()?;
    let v = match &f.value {
        StrOrInt::Int(n) => u64::try_from(*n).ok(),
        StrOrInt::Str(s) => parse_size(s),
    };
    match v {
        Some(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            issues.push(
                f.pos,
                format!("{what} must be a size between {min} and {max} bytes (e.g. 64KiB, 10MB)"),
            );
            None
        }
    }
}

/// `min_body_rate`: a size per second (`1KiB/s`, `500`, `0` = off).
fn body_rate(field: &Located<StrOrInt>, issues: &mut Issues) -> Option<u64> {
    const MAX: u64 = 1 << 30;
    let v = match &field.value {
        StrOrInt::Int(n) => u64::try_from(*n).ok(),
        StrOrInt::Str(s) => {
            let t = s.trim();
            parse_size(t.strip_suffix("/s").unwrap_or(t))
        }
    };
    match v {
        Some(v) if v <= MAX => Some(v),
        _ => {
            issues.push(
                field.pos,
                format!("min_body_rate must be a size per second between 0 (off) and {MAX} bytes/s (e.g. 1KiB/s)"),
            );
            None
        }
    }
}

fn count(
    field: &Option<Located<u64>>,
    min: u64,
    max: u64,
    what: &str,
    issues: &mut Issues,
) -> Option<u64> {
    let f = field.as_ref()?;
    if (min..=max).contains(&f.value) {
        Some(f.value)
    } else {
        issues.push(
            f.pos,
            format!("{what} must be between {min} and {max}, got {}", f.value),
        );
        None
    }
}

/// Converts `limits:` (defaults for what is left out).
pub(crate) fn limits(file: Option<&Located<LimitsFile>>, issues: &mut Issues) -> Limits {
    let mut l = Limits::default();
    let Some(file) = file else {
        return l;
    };
    let f = &file.value;
    // hyper's read buffer cannot be smaller than 8 KiB.
    if let Some(v) = size(
        &f.max_request_line,
        64,
        64 * 1024,
        "max_request_line",
        issues,
    ) {
        l.max_request_line = v as usize;
    }
    if let Some(v) = size(
        &f.max_header_bytes,
        8 * 1024,
        16 << 20,
        "max_header_bytes",
        issues,
    ) {
        l.max_header_bytes = v as usize;
    }
    if let Some(v) = size(
        &f.response_buffer,
        16 * 1024,
        64 << 20,
        "response_buffer",
        issues,
    ) {
        l.response_buffer = v as usize;
    }
    if let Some(v) = count(&f.max_headers, 1, 10_000, "max_headers", issues) {
        l.max_headers = v as usize;
    }
    if let Some(v) = size(&f.max_body, 0, u64::MAX, "max_body", issues) {
        l.max_body = v;
    }
    if let Some(t) = &f.header_timeout {
        if t.value.0.is_zero() {
            issues.push(t.pos, "header_timeout must be greater than 0");
        } else {
            l.header_timeout = Some(t.value.0);
        }
    }
    if let Some(v) = count(
        &f.max_requests_per_connection,
        0,
        u64::MAX,
        "max_requests_per_connection",
        issues,
    ) {
        l.max_requests_per_connection = v;
    }
    if let Some(v) = count(&f.max_connections, 1, 10_000_000, "max_connections", issues) {
        l.max_connections = v as usize;
    }
    if let Some(v) = count(
        &f.max_connections_per_ip,
        0,
        10_000_000,
        "max_connections_per_ip",
        issues,
    ) {
        l.max_connections_per_ip = v as usize;
    }
    if let Some(t) = &f.body_timeout {
        if t.value.0.is_zero() {
            issues.push(
                t.pos,
                "body_timeout must be greater than 0 (min_body_rate: 0 turns the check off)",
            );
        } else {
            l.body_timeout = t.value.0;
        }
    }
    if let Some(v) = f.min_body_rate.as_ref().and_then(|r| body_rate(r, issues)) {
        l.min_body_rate = v;
    }
    l
}

/// Converts the `rate_limit:` of a listener or a route.
pub(crate) fn ip_rate_limit(
    file: Option<&Located<IpRateLimitFile>>,
    issues: &mut Issues,
) -> Option<IpRateLimit> {
    let file = file?;
    let Some(per_ip) = &file.value.per_ip else {
        issues.push(file.pos, "rate_limit needs per_ip (e.g. per_ip: 100/s)");
        return None;
    };
    let rate = match &per_ip.value {
        StrOrInt::Int(n) if *n > 0 && *n <= u32::MAX as i128 => Some(*n as f64),
        StrOrInt::Str(s) => super::parse_rate(s),
        StrOrInt::Int(_) => None,
    };
    let Some(rate) = rate else {
        issues.push(
            per_ip.pos,
            "invalid per_ip rate (expected a positive count per s, m or h, e.g. 100/s)",
        );
        return None;
    };
    let burst = match &file.value.burst {
        Some(b) if b.value == 0 => {
            issues.push(b.pos, "burst must be at least 1");
            return None;
        }
        Some(b) => b.value,
        None => rate.ceil().max(1.0) as u32,
    };
    Some(IpRateLimit {
        per_ip: rate,
        burst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn yaml(extra: &str) -> String {
        format!("listeners:\n  - name: web\n    listen: \"127.0.0.1:0\"\n    pool: web\n{extra}pools:\n  web:\n    backends:\n      - {{ address: \"127.0.0.1:1\" }}\n")
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn limits_and_rate_limit_convert() {
        let c = crate::config::load_str(
            &yaml("    limits: { max_body: 1MiB, max_headers: 20, header_timeout: 2s, max_connections_per_ip: 5 }\n    rate_limit: { per_ip: 10/s, burst: 20 }\n"),
            Path::new("t.yaml"),
        )
        .expect("valid");
        let l = &c.listeners[0];
        assert_eq!(l.limits.max_body, 1 << 20);
        assert_eq!(l.limits.max_headers, 20);
        assert_eq!(l.limits.header_timeout, Some(Duration::from_secs(2)));
        assert_eq!(l.limits.max_connections_per_ip, 5);
        assert_eq!(l.limits.max_requests_per_connection, 0);
        assert_eq!(
            l.rate_limit,
            Some(IpRateLimit {
                per_ip: 10.0,
                burst: 20
            })
        );
    }

    #[test]
    fn body_rate_and_route_rate_limits_convert() {
        let c = crate::config::load_str(&yaml(""), Path::new("t.yaml")).expect("valid");
        let l = &c.listeners[0].limits;
        assert_eq!(
            (l.body_timeout, l.min_body_rate),
            (Duration::from_secs(20), 500)
        );
        for (text, rate) in [
            ("10KiB/s", 10 << 10),
            ("1000", 1000),
            ("0", 0),
            ("2MB", 2_000_000),
        ] {
            let c = crate::config::load_str(
                &yaml(&format!(
                    "    limits: {{ body_timeout: 300ms, min_body_rate: {text} }}\n"
                )),
                Path::new("t.yaml"),
            )
            .expect("valid");
            let l = &c.listeners[0].limits;
            assert_eq!(l.body_timeout, Duration::from_millis(300), "{text}");
            assert_eq!(l.min_body_rate, rate, "{text}");
        }
        let c = crate::config::load_str(
            &yaml("routes:\n  - { path_prefix: /login, pool: web, rate_limit: { per_ip: 5/s, burst: 10 } }\n  - { pool: web, rate_limit: { per_ip: 2/m } }\n"),
            Path::new("t.yaml"),
        )
        .expect("valid");
        assert_eq!(
            c.routes[0].rate_limit,
            Some(IpRateLimit {
                per_ip: 5.0,
                burst: 10
            })
        );
        let per_minute = c.routes[1].rate_limit.as_ref().expect("limit");
        assert_eq!(per_minute.burst, 1);
        assert!((per_minute.per_ip - 2.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn bad_body_rates_and_route_rate_limits_are_located() {
        let e = crate::config::load_str(
            &yaml("    limits: { body_timeout: 0s, min_body_rate: 1KiB/m }\nroutes:\n  - { pool: web, rate_limit: { per_ip: fast } }\n  - { pool: web, rate_limit: { burst: 3 } }\n  - { pool: web, rate_limit: { per_ip: 1/s, burst: 0, pre_ip: 1 } }\n"),
            Path::new("t.yaml"),
        )
        .expect_err("invalid");
        let text = e.to_string();
        for want in [
            "t.yaml:5:29: body_timeout must be greater than 0",
            "t.yaml:5:48: min_body_rate must be a size per second",
            "t.yaml:7:40: invalid per_ip rate",
            "t.yaml:8:30: rate_limit needs per_ip",
            "unknown field \"pre_ip\"",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        let e = crate::config::load_str(
            &yaml("    limits: { min_body_rate: 2GiB/s }\nroutes:\n  - { pool: web, rate_limit: { per_ip: 1/s, burst: 0 } }\n"),
            Path::new("t.yaml"),
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("t.yaml:5:30: min_body_rate must be"),
            "{text}"
        );
        assert!(
            text.contains("t.yaml:7:52: burst must be at least 1"),
            "{text}"
        );
    }

    #[test]
    fn bad_limits_are_located() {
        let e = crate::config::load_str(
            &yaml("    limits: { max_header_bytes: 100, max_headers: 0, max_bodyy: 1 }\n    rate_limit: { per_ip: fast }\n"),
            Path::new("t.yaml"),
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert!(text.contains("t.yaml:5:"), "{text}");
        assert!(text.contains("max_bodyy"), "{text}");
        let e = crate::config::load_str(
            &yaml("    limits: { max_header_bytes: 100, max_headers: 0 }\n    rate_limit: { per_ip: fast }\n"),
            Path::new("t.yaml"),
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("t.yaml:5:33: max_header_bytes must be a size"),
            "{text}"
        );
        assert!(text.contains("max_headers must be between 1"), "{text}");
        assert!(text.contains("t.yaml:6:27: invalid per_ip rate"), "{text}");
    }
}
