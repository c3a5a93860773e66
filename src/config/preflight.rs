//! What `autolb check` adds to `tls::config_files::load`: whether a valid config can run here, now, as
//! this user. The variable `admin.token_env` names must be set (`autolb run` refuses to
//! start without it), every autoscale program must be found where autolb will look for it,
//! and (`tls::config_files::load` already reads them) every certificate and key must be readable. Each
//! problem is reported at the line and column of the setting, like any config error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{Issues, Pos};
use super::model::{Autoscale, Config};
use super::node::{Node, Value};
use super::{ConfigError, ConfigErrors};

/// Where `check` runs, as far as the checks care.
pub struct Environment<'a> {
    /// The value of an environment variable (`std::env::var` for real).
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// The directory of the autolb binary: the process provider looks a bare program name
    /// up there first, then on PATH (`autoscale::process::resolve_program`).
    pub autolb_dir: Option<PathBuf>,
    /// The working directory autolb will run in (a relative `cwd` or program resolves
    /// against it).
    pub cwd: PathBuf,
}

impl Environment<'static> {
    /// This process's environment.
    pub fn current() -> Environment<'static> {
        Environment {
            var: &|name| std::env::var(name).ok(),
            autolb_dir: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf)),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// Check `config` (valid, loaded as the tree `root`) against `env`. `Ok` carries warnings.
pub(crate) fn check(
    root: &Node,
    config: &Config,
    env: &Environment,
) -> Result<Vec<ConfigError>, ConfigErrors> {
    let file = config.source.display().to_string();
    let mut issues = Issues::new();
    let mut warnings = Issues::new();
    let set = |var: &str| (env.var)(var).is_some_and(|v| !v.trim().is_empty());
    if let Some(var) = &config.admin.token_env {
        if !set(var) {
            let at = pos(root, &["admin", "token_env"]);
            issues.push(
                at,
                format!(
                    "admin.token_env names {var}, which is unset or empty here: autolb run would refuse to start"
                ),
            );
        }
    }
    if let Some(var) = config.alerts.as_ref().and_then(|a| a.token_env.as_ref()) {
        if !set(var) {
            warnings.push(
                pos(root, &["alerts", "token_env"]),
                format!("warning: alerts.token_env names {var}, which is unset or empty here: alerts would be sent without a token"),
            );
        }
    }
    let pool_nodes = root.get("pools").and_then(Node::as_map).unwrap_or_default();
    for (k, pool) in config.pools.iter().enumerate() {
        let Some(a) = &pool.autoscale else {
            continue;
        };
        let node = pool_nodes.get(k).map(|(_, v)| v);
        let at = |key: &str| {
            let n = node
                .and_then(|n| n.get("autoscale"))
                .and_then(|n| n.get(key));
            match n.map(|n| &n.value) {
                Some(Value::Seq(items)) if !items.is_empty() => items[0].pos,
                _ => n.or(node).map_or(Pos::START, |n| n.pos),
            }
        };
        if let Some(dir) = &a.cwd {
            let dir = env.cwd.join(dir);
            if !dir.is_dir() {
                issues.push(
                    at("cwd"),
                    format!(
                        "pool \"{}\": autoscale cwd {} is not a directory",
                        pool.name,
                        dir.display()
                    ),
                );
            }
        }
        let programs: Vec<(&str, &Vec<String>, bool)> = match &a.provider {
            super::model::ProviderConfig::Command(c) => {
                vec![("scale", &c.scale, false), ("list", &c.list, false)]
            }
            super::model::ProviderConfig::Process(p) => vec![("command", &p.command, true)],
        };
        for (key, argv, beside) in programs {
            let Some(program) = argv.first() else {
                continue;
            };
            if let Err(e) = find_program(program, a, beside, env) {
                issues.push(
                    at(key),
                    format!("pool \"{}\": autoscale {key}: {e}", pool.name),
                );
            }
        }
    }
    if issues.is_empty() {
        Ok(warnings.into_errors(&file).0)
    } else {
        Err(issues.into_errors(&file))
    }
}

fn pos(root: &Node, path: &[&str]) -> Pos {
    let mut node = root;
    for key in path {
        match node.get(key) {
            Some(n) => node = n,
            None => break,
        }
    }
    node.pos
}

/// Where the program of an autoscale argv will be found, as the provider runs it: a name
/// with a slash relative to the instances' working directory; a bare name beside the
/// autolb binary (process provider only), then in the directories of PATH (the
/// instances' PATH when `env` sets one).
fn find_program(
    program: &str,
    cfg: &Autoscale,
    beside: bool,
    env: &Environment,
) -> Result<PathBuf, String> {
    if program.contains('{') {
        // `{port}` or `{instance}` in the program itself: known only at run time.
        return Ok(PathBuf::from(program));
    }
    let cwd = match &cfg.cwd {
        Some(d) => env.cwd.join(d),
        None => env.cwd.clone(),
    };
    if program.contains('/') {
        let path = cwd.join(program);
        return executable(&path).map(|()| path);
    }
    let mut tried = Vec::new();
    if beside {
        if let Some(dir) = &env.autolb_dir {
            let p = dir.join(program);
            if p.is_file() {
                return executable(&p).map(|()| p);
            }
            tried.push(format!("beside autolb ({})", dir.display()));
        }
    }
    let path = cfg
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| (env.var)("PATH"))
        .unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = cwd.join(dir).join(program);
        if p.is_file() && executable(&p).is_ok() {
            return Ok(p);
        }
    }
    tried.push(format!("on PATH ({path})"));
    Err(format!(
        "program \"{program}\" not found {}",
        tried.join(" or ")
    ))
}

fn executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => Err(format!("{} is not executable", path.display())),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
