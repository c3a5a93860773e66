//! `pools.NAME.limits: {max_inflight, max_queue, queue_timeout}`: the pool's concurrency
//! limit and its bounded FIFO queue (HAProxy `maxconn` / `maxqueue` / `timeout queue`),
//! every bad value an error at its line.

use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::Dur;
use super::node::Located;

/// Requests that may wait for a slot when `max_queue` is left out.
pub const DEFAULT_MAX_QUEUE: u32 = 1024;
/// The longest wait in the queue when `queue_timeout` is left out.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of `max_inflight` and `max_queue` (a typo guard, far above any real pool).
const MAX_COUNT: u64 = 1_000_000;

/// A validated pool `limits:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Requests in flight to the pool's backends at once, over all workers (>= 1).
    pub max_inflight: u32,
    /// Requests waiting for a slot; one more is refused at once (503). 0: no queue.
    pub max_queue: u32,
    /// The longest wait for a slot; then 503.
    pub queue_timeout: Duration,
}

/// `limits:` on a pool, as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a limits mapping (max_inflight, max_queue, queue_timeout)"
)]
pub struct PoolLimitsFile {
    pub max_inflight: Option<Located<u64>>,
    pub max_queue: Option<Located<u64>>,
    pub queue_timeout: Option<Located<Dur>>,
}

/// A count within `min..=MAX_COUNT`, or an issue at its position.
fn count(field: &Located<u64>, min: u64, what: &str, issues: &mut Issues) -> Option<u32> {
    if (min..=MAX_COUNT).contains(&field.value) {
        u32::try_from(field.value).ok()
    } else {
        issues.push(
            field.pos,
            format!(
                "{what} must be between {min} and {MAX_COUNT}, got {}",
                field.value
            ),
        );
        None
    }
}

/// Converts a pool's `limits:`, collecting every issue.
pub(crate) fn pool_limits(
    file: &Located<PoolLimitsFile>,
    issues: &mut Issues,
) -> Option<PoolLimits> {
    let f = &file.value;
    let max_inflight = match &f.max_inflight {
        Some(m) => count(m, 1, "limits.max_inflight", issues),
        None => {
            issues.push(
                file.pos,
                "limits needs max_inflight (requests in flight to the pool at once, e.g. 500)",
            );
            None
        }
    };
    let max_queue = match &f.max_queue {
        Some(m) => count(m, 0, "limits.max_queue", issues),
        None => Some(DEFAULT_MAX_QUEUE),
    };
    let queue_timeout = match &f.queue_timeout {
        Some(t) if t.value.0.is_zero() => {
            issues.push(t.pos, "limits.queue_timeout must be greater than 0");
            None
        }
        Some(t) => Some(t.value.0),
        None => Some(DEFAULT_QUEUE_TIMEOUT),
    };
    Some(PoolLimits {
        max_inflight: max_inflight?,
        max_queue: max_queue?,
        queue_timeout: queue_timeout?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pool_yaml(limits: &str) -> String {
        format!(
            "listeners:\n  - {{ name: web, listen: \"127.0.0.1:0\", pool: web }}\npools:\n  web:\n    limits: {limits}\n    backends:\n      - {{ address: \"127.0.0.1:1\" }}\n"
        )
    }

    fn errors(limits: &str) -> String {
        crate::config::load_str(&pool_yaml(limits), Path::new("t.yaml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn pool_limits_convert_with_defaults() {
        let c = crate::config::load_str(&pool_yaml("{ max_inflight: 500 }"), Path::new("t.yaml"))
            .expect("valid");
        assert_eq!(
            c.pools[0].limits,
            Some(PoolLimits {
                max_inflight: 500,
                max_queue: DEFAULT_MAX_QUEUE,
                queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            })
        );
        let c = crate::config::load_str(
            &pool_yaml("{ max_inflight: 2, max_queue: 0, queue_timeout: 250ms }"),
            Path::new("t.yaml"),
        )
        .expect("valid");
        assert_eq!(
            c.pools[0].limits,
            Some(PoolLimits {
                max_inflight: 2,
                max_queue: 0,
                queue_timeout: Duration::from_millis(250),
            })
        );
        let c = crate::config::load_str(
            "listeners:\n  - { name: web, listen: \"127.0.0.1:0\", pool: web }\npools:\n  web:\n    backends: [ { address: \"127.0.0.1:1\" } ]\n",
            Path::new("t.yaml"),
        )
        .expect("valid");
        assert_eq!(c.pools[0].limits, None);
    }

    #[test]
    fn bad_pool_limits_are_all_errors_at_their_line() {
        // Every bad value at once, each at its own column.
        let text = errors("{ max_inflight: 0, max_queue: 2000000, queue_timeout: 0s }");
        assert!(
            text.contains("t.yaml:5:29: limits.max_inflight must be between 1 and 1000000, got 0"),
            "{text}"
        );
        assert!(
            text.contains("t.yaml:5:43: limits.max_queue must be between 0 and 1000000"),
            "{text}"
        );
        assert!(
            text.contains("t.yaml:5:67: limits.queue_timeout must be greater than 0"),
            "{text}"
        );
        let text = errors("{ max_queue: 10 }");
        assert!(
            text.contains("t.yaml:5:13: limits needs max_inflight"),
            "{text}"
        );
        let text = errors("{ max_inflight: 5, queue_timeout: soon }");
        assert!(
            text.contains("t.yaml:5:") && text.contains("invalid duration \"soon\""),
            "{text}"
        );
        let text = errors("{ max_inflight: 5, maxqueue: 3 }");
        assert!(text.contains("unknown field"), "{text}");
        let text = errors("{ max_inflight: -1 }");
        assert!(text.contains("t.yaml:5:"), "{text}");
    }
}
