//! `pools.NAME.rate_limit: {rate, burst, scope}`: a token bucket on each node
//! (`scope: node`, the default) or one limit for the whole fleet (`scope: cluster`), whose
//! capacity the nodes lease from the shared state in batches.

use serde::Deserialize;

use super::error::Issues;
use super::file::StrOrInt;
use super::node::Located;

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// Each node enforces the limit on its own.
    #[default]
    Node,
    /// The limit holds across every node sharing the state (Redis).
    Cluster,
}

/// A validated `rate_limit:`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per second.
    pub rate: f64,
    /// Bucket size: how many requests may arrive at once (default: one second's worth).
    pub burst: u32,
    pub scope: RateLimitScope,
}

/// `rate_limit:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate_limit mapping (rate, burst, scope)"
)]
pub struct RateLimitFile {
    pub rate: Option<Located<StrOrInt>>,
    pub burst: Option<Located<u32>>,
    pub scope: Option<Located<RateLimitScope>>,
}

/// Parses `100`, `100/s`, `6000/m` or `360000/h` into requests per second.
pub fn parse_rate(text: &str) -> Option<f64> {
    let text = text.trim();
    let (count, per) = match text.split_once('/') {
        Some((c, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                _ => return None,
            };
            (c.trim(), per)
        }
        None => (text, 1.0),
    };
    let count: u64 = count.parse().ok()?;
    (count > 0).then(|| count as f64 / per)
}

/// Converts `rate_limit:`, reporting every issue at its line.
pub(crate) fn rate_limit(file: &Located<RateLimitFile>, issues: &mut Issues) -> Option<RateLimit> {
    let f = &file.value;
    let Some(rate_field) = &f.rate else {
        issues.push(file.pos, "rate_limit needs a rate (e.g. rate: 100/s)");
        return None;
    };
    let rate = match &rate_field.value {
        StrOrInt::Int(n) if *n > 0 && *n <= u32::MAX as i128 => Some(*n as f64),
        StrOrInt::Str(s) => parse_rate(s),
        StrOrInt::Int(_) => None,
    };
    let Some(rate) = rate else {
        issues.push(
            rate_field.pos,
            "invalid rate (expected a positive count per s, m or h, e.g. 100/s)",
        );
        return None;
    };
    let burst = match &f.burst {
        Some(b) if b.value == 0 => {
            issues.push(b.pos, "burst must be at least 1");
            return None;
        }
        Some(b) => b.value,
        None => rate.ceil().max(1.0) as u32,
    };
    Some(RateLimit {
        rate,
        burst,
        scope: f.scope.as_ref().map(|s| s.value).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_rate, RateLimit, RateLimitScope};
    use std::path::Path;

    fn pool_yaml(rate_limit: &str) -> String {
        format!(
            "listeners:\n  - {{ name: web, listen: \"127.0.0.1:0\", pool: web }}\npools:\n  web:\n    rate_limit: {rate_limit}\n    backends:\n      - {{ address: \"127.0.0.1:1\" }}\n"
        )
    }

    #[test]
    fn rate_limits_convert_with_defaults() {
        let c = crate::config::load_str(
            &pool_yaml("{ rate: 100/s, scope: cluster }"),
            Path::new("t.yaml"),
        )
        .expect("valid");
        assert_eq!(
            c.pools[0].rate_limit,
            Some(RateLimit {
                rate: 100.0,
                burst: 100,
                scope: RateLimitScope::Cluster
            })
        );
        let c = crate::config::load_str(&pool_yaml("{ rate: 5, burst: 2 }"), Path::new("t.yaml"))
            .expect("valid");
        assert_eq!(
            c.pools[0].rate_limit.as_ref().map(|r| (r.burst, r.scope)),
            Some((2, RateLimitScope::Node))
        );
    }

    #[test]
    fn bad_rate_limits_are_errors_at_their_line() {
        let errors = |y: &str| {
            crate::config::load_str(&pool_yaml(y), Path::new("t.yaml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            errors("{ rate: 10/d }").contains("t.yaml:5:25: invalid rate"),
            "{}",
            errors("{ rate: 10/d }")
        );
        assert!(
            errors("{ rate: 10, burst: 0 }").contains("t.yaml:5:36: burst must be at least 1"),
            "{}",
            errors("{ rate: 10, burst: 0 }")
        );
        assert!(
            errors("{ burst: 3 }").contains("t.yaml:5:17: rate_limit needs a rate"),
            "{}",
            errors("{ burst: 3 }")
        );
        assert!(
            errors("{ rate: 1, scope: world }").contains("t.yaml:5:"),
            "{}",
            errors("{ rate: 1, scope: world }")
        );
        assert!(
            errors("{ rate: 1, per: 2 }").contains("unknown field"),
            "{}",
            errors("{ rate: 1, per: 2 }")
        );
    }

    #[test]
    fn rates_parse_per_unit() {
        assert_eq!(parse_rate("100"), Some(100.0));
        assert_eq!(parse_rate("100/s"), Some(100.0));
        assert_eq!(parse_rate("120/m"), Some(2.0));
        assert_eq!(parse_rate(" 7200 / h "), Some(2.0));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("10/d"), None);
        assert_eq!(parse_rate("x/s"), None);
    }
}
