//! Configuration: YAML text -> spanned tree (`node`) -> serde file types (`file`, via `de`)
//! -> validated runtime types (`model`, via `convert`/`pool`/`health`/`retry`), every error
//! as FILE:LINE:COL.

mod access_log;
mod acme;
mod alerts;
mod alerts_email;
mod autoscale;
mod autoscale_external;
mod cache;
mod checks;
mod client_auth;
mod compress;
mod convert;
mod de;
pub mod diff;
mod discovery;
pub(crate) mod error;
mod file;
mod health;
mod l4;
mod limits;
pub(crate) mod node;
mod normalize;
mod pool;
mod pool_limits;
pub mod preflight;
mod quic;
mod rate_limit;
mod retry;
mod schedule;
mod state;
mod sticky;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_autoscale;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_ops;
#[cfg(test)]
mod tests_policy;
#[cfg(test)]
mod tests_state;
#[cfg(test)]
mod tests_yaml;
mod tls;
pub mod watch;
mod yaml;
mod yaml_saphyr;
mod yaml_scalar;

pub mod model;
pub use access_log::{AccessLog, AccessLogFormat, AccessLogTarget};
pub use acme::{Acme, Challenge as AcmeChallenge, ACME_TLS_ALPN};
pub use alerts::{AlertKind, Alerts, WebhookUrl};
pub use alerts_email::{Email, StartTls};
pub use autoscale_external::{ExternalTargets, PrometheusTarget, RedisListTarget};
pub use cache::Cache;
pub use client_auth::{ClientAuth, ClientAuthMode};
pub use compress::{Compress, Encoding};
pub use error::{ConfigError, ConfigErrors};
pub use l4::{ProxyVersion, SniRoute};
pub use limits::{parse_size, IpRateLimit, Limits};
pub use model::*;
pub use pool_limits::PoolLimits;
pub use quic::{Http3, RetryMode};
pub use rate_limit::{parse_rate, RateLimit, RateLimitScope};
pub use schedule::{Predictive, ScheduleEntry};
pub use state::{host_port, redact};

use std::path::Path;

use error::Issues;

/// The text of the config file at `path`. A file that cannot be read is one error without
/// a place, naming the path as resolved against the working directory (`/etc/x.yaml:
/// cannot read the config file: No such file or directory (os error 2)`). Loading a config
/// *file* also checks the files it names: `tls::config_files::load`.
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        let resolved = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        ConfigErrors::single(
            &resolved.display().to_string(),
            format!("cannot read the config file: {e}"),
        )
    })
}

/// Validates config `text`; `source` names the file in messages, is kept in
/// `Config::source`, and relative certificate paths resolve against its directory.
pub fn load_str(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
    load_tree(text, source).map(|(config, _)| config)
}

/// `load_str`, handing back the parsed tree too: checks beyond the config itself (the files
/// it names, `tls::config_files`; `preflight`) locate their errors in it.
pub(crate) fn load_tree(text: &str, source: &Path) -> Result<(Config, node::Node), ConfigErrors> {
    let file = source.display().to_string();
    let root = node::parse(text).map_err(|issue| {
        let mut issues = Issues::new();
        issues.push(issue.pos, issue.message);
        issues.into_errors(&file)
    })?;
    let mut config = convert::build(&root, source).map_err(|issues| issues.into_errors(&file))?;
    config.hash = text_hash(text);
    Ok((config, root))
}

/// The config hash of a config's text (`Config::hash`).
pub fn text_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}
