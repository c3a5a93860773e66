//! `autoscale.target.prometheus` and `autoscale.target.redis_list`: signals from systems the
//! user already runs (a PromQL query, a queue's length), their file types and validation.

use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::Dur;
use super::node::Located;
use super::WebhookUrl;

/// `target.prometheus` in the file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a prometheus mapping (url, query, per_instance, timeout)"
)]
pub struct PrometheusFile {
    pub url: Located<String>,
    pub query: Located<String>,
    pub per_instance: Located<f64>,
    pub timeout: Option<Located<Dur>>,
}

/// `target.redis_list` in the file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a redis_list mapping (key, per_instance)"
)]
pub struct RedisListFile {
    pub key: Located<String>,
    pub per_instance: Located<f64>,
}

/// A PromQL query whose value (summed over the series it returns) is held at
/// `per_instance` times the ready instances.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusTarget {
    /// The server's base URL (`/api/v1/query` is appended to its path).
    pub url: WebhookUrl,
    pub query: String,
    pub per_instance: f64,
    pub timeout: Duration,
}

/// The length of a Redis list on the shared-state Redis (`LLEN key`), held at
/// `per_instance` items per ready instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisListTarget {
    pub key: String,
    pub per_instance: f64,
}

/// The external signals of a pool's autoscaler.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExternalTargets {
    pub prometheus: Option<PrometheusTarget>,
    pub redis_list: Option<RedisListTarget>,
}

fn per_instance(l: &Located<f64>, what: &str, issues: &mut Issues) -> f64 {
    if !(l.value.is_finite() && l.value > 0.0) {
        issues.push(
            l.pos,
            format!("target.{what}.per_instance must be a number greater than 0"),
        );
    }
    l.value
}

pub(crate) fn prometheus(
    file: Option<&Located<PrometheusFile>>,
    issues: &mut Issues,
) -> Option<PrometheusTarget> {
    let f = &file?.value;
    let url = match super::alerts::parse_http_url(&f.url.value, "target.prometheus.url") {
        Ok(u) => Some(u),
        Err(e) => {
            issues.push(f.url.pos, e);
            None
        }
    };
    if let Some(u) = &url {
        if u.path.contains('?') {
            issues.push(
                f.url.pos,
                "target.prometheus.url is the server's base URL, without a query",
            );
        }
    }
    let query = f.query.value.trim().to_string();
    if query.is_empty() {
        issues.push(f.query.pos, "target.prometheus.query must not be empty");
    }
    let per_instance = per_instance(&f.per_instance, "prometheus", issues);
    let timeout = match &f.timeout {
        Some(t) if t.value.0.is_zero() => {
            issues.push(t.pos, "target.prometheus.timeout must be greater than 0");
            Duration::from_secs(2)
        }
        Some(t) => t.value.0,
        None => Duration::from_secs(2),
    };
    Some(PrometheusTarget {
        url: url?,
        query,
        per_instance,
        timeout,
    })
}

pub(crate) fn redis_list(
    file: Option<&Located<RedisListFile>>,
    issues: &mut Issues,
) -> Option<RedisListTarget> {
    let f = &file?.value;
    let key = f.key.value.clone();
    if key.is_empty() {
        issues.push(f.key.pos, "target.redis_list.key must not be empty");
    }
    Some(RedisListTarget {
        key,
        per_instance: per_instance(&f.per_instance, "redis_list", issues),
    })
}
