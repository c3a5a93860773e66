//! `autolb check [-q] FILE`: the config and what running it here needs, every problem as
//! `FILE:LINE:COL: message` on stderr; exit status 1 on any error.

use std::path::Path;
use std::process::ExitCode;

use autolb::config::{preflight::Environment, Config, ConfigErrors};

use crate::{err, out};

/// Validate `path` as `run` would load it, in this environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    autolb::tls::config_files::check(path, &Environment::current())
}

pub fn main(path: &Path, quiet: bool) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            if !quiet {
                for w in &cfg.warnings {
                    err(format_args!("{w}"));
                }
                out(format_args!("{}: ok: {}", path.display(), summary(&cfg)));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(path, &errors, quiet);
            ExitCode::FAILURE
        }
    }
}

pub fn summary(cfg: &Config) -> String {
    let backends: usize = cfg.pools.iter().map(|p| p.backends.len()).sum();
    format!(
        "{} listener(s), {} route(s), {} pool(s), {} backend(s)",
        cfg.listeners.len(),
        cfg.routes.len(),
        cfg.pools.len(),
        backends
    )
}

pub fn print_errors(path: &Path, errors: &ConfigErrors, quiet: bool) {
    for e in errors.iter() {
        err(format_args!("{e}"));
    }
    if !quiet {
        err(format_args!(
            "{}: {} error(s)",
            path.display(),
            errors.len()
        ));
    }
}
