//! Configuration: YAML text -> spanned tree (`node`) -> serde file types (`file`, via `de`)
//! -> validated runtime types (`model`, via `convert`/`pool`/`health`/`retry`), every error
//! as FILE:LINE:COL.

mod access_log;
mod alerts;
mod alerts_email;
mod autoscale;
mod checks;
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
mod rate_limit;
mod retry;
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
pub use alerts::{AlertKind, Alerts, WebhookUrl};
pub use alerts_email::{Email, StartTls};
pub use compress::{Compress, Encoding};
pub use error::{ConfigError, ConfigErrors};
pub use l4::{ProxyVersion, SniRoute};
pub use limits::{parse_size, IpRateLimit, Limits};
pub use model::*;
pub use pool_limits::PoolLimits;
pub use rate_limit::{parse_rate, RateLimit, RateLimitScope};
pub use state::{host_port, redact};

use std::path::Path;

use error::Issues;

/// Reads and validates the config file at `path` (an I/O error is one error at line 0), then
/// the files it names (certificates, keys, CA bundles): a bad one is an error at the line of
/// its path; an expired certificate is a warning in `Config::warnings`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut config = load_str(&text, path)?;
            config.warnings = files::check(&text, &config)?;
            Ok(config)
        }
        Err(e) => Err(ConfigErrors::single(
            &path.display().to_string(),
            format!("cannot read config: {e}"),
        )),
    }
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
