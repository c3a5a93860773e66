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
mod error;
mod file;
mod files;
mod health;
mod l4;
mod limits;
mod node;
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
mod tls;
pub mod watch;

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

/// Reads and validates the config file at `path`, then the files it names (certificates,
/// keys, CA bundles): a bad one is an error at the line of its path; an expired certificate
/// is a warning in `Config::warnings`. A file that cannot be read is one error without a
/// place, naming the path as resolved against the working directory (`/etc/x.yaml: cannot
/// read the config file: No such file or directory (os error 2)`).
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    let mut config = load_str(&text, path)?;
    config.warnings = files::check(&text, &config)?;
    Ok(config)
}

/// `autolb check`: `load_file`, then whether the config can run in `env` (`preflight`):
/// every error of both, in file order.
pub fn check_file(path: &Path, env: &preflight::Environment) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    let mut config = load_str(&text, path)?;
    let (files, preflight) = (
        files::check(&text, &config),
        preflight::check(&text, &config, env),
    );
    match (files, preflight) {
        (Ok(mut warnings), Ok(more)) => {
            warnings.extend(more);
            warnings.sort_by_key(|w| (w.line, w.column));
            config.warnings = warnings;
            Ok(config)
        }
        (Err(mut errors), Err(more)) => {
            errors.0.extend(more.0);
            errors.0.sort_by_key(|e| (e.line, e.column));
            Err(errors)
        }
        (Err(errors), _) | (_, Err(errors)) => Err(errors),
    }
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
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
    let file = source.display().to_string();
    let root = node::parse(text).map_err(|issue| {
        let mut issues = Issues::new();
        issues.push(issue.pos, issue.message);
        issues.into_errors(&file)
    })?;
    let mut config = convert::build(&root, source).map_err(|issues| issues.into_errors(&file))?;
    config.hash = text_hash(text);
    Ok(config)
}

/// The config hash of a config's text (`Config::hash`).
pub fn text_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}
