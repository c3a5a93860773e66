//! Loading a config *file*: its text validated (`config`), then the files it names
//! (listener certificates and keys, client CA bundles and CRLs, pool, Redis and ACME CA
//! bundles and client certificates) read and checked with the parsers TLS serves them with.
//! Each problem is reported at the line and column of the path that names the file; an
//! expired certificate is only a warning (it is served, as HAProxy does).

use std::collections::HashSet;
use std::path::Path;

use super::certs::{self, Side};
use super::client::{self, Field};
use crate::config::error::{Issues, Pos};
use crate::config::node::{Node, Value};
use crate::config::preflight::{self, Environment};
use crate::config::{self, Config, ConfigError, ConfigErrors, State};

/// Reads and validates the config file at `path`, then the files it names: a bad one is an
/// error at the line of its path; an expired certificate is a warning in
/// `Config::warnings`. A file that cannot be read is one error without a place (see
/// `config::read_file`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = config::read_file(path)?;
    let (mut config, root) = config::load_tree(&text, path)?;
    config.warnings = check_files(&root, &config)?;
    Ok(config)
}

/// `autolb check`: `load`, then whether the config can run in `env` (`preflight`): every
/// error of both, in file order.
pub fn check(path: &Path, env: &Environment) -> Result<Config, ConfigErrors> {
    let text = config::read_file(path)?;
    let (mut config, root) = config::load_tree(&text, path)?;
    let (files, preflight) = (
        check_files(&root, &config),
        preflight::check(&root, &config, env),
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

fn items(node: Option<&Node>) -> &[Node] {
    match node.map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

fn pos_of(node: Option<&Node>, key: &str, fallback: Pos) -> Pos {
    node.and_then(|n| n.get(key)).map_or(fallback, |n| n.pos)
}

/// Check every file `config` (loaded as the tree `root`) names. `Ok` carries the warnings.
fn check_files(root: &Node, config: &Config) -> Result<Vec<ConfigError>, ConfigErrors> {
    let file = config.source.display().to_string();
    let mut issues = Issues::new();
    let mut warnings = Issues::new();
    listeners(root, config, &mut issues, &mut warnings);
    pools(root, config, &mut issues, &mut warnings);
    redis(root, config, &mut issues);
    if issues.is_empty() {
        Ok(warnings.into_errors(&file).0)
    } else {
        Err(issues.into_errors(&file))
    }
}

fn listeners(root: &Node, config: &Config, issues: &mut Issues, warnings: &mut Issues) {
    // A valid config holds every listener of the file, in file order.
    let nodes = items(root.get("listeners"));
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else {
            continue;
        };
        let node = nodes.get(i);
        let fallback = node.map_or(Pos::START, |n| n.pos);
        let pair_nodes = items(
            node.and_then(|n| n.get("tls"))
                .and_then(|t| t.get("certificates")),
        );
        if let Some(ca) = tls.acme.as_ref().and_then(|a| a.ca.as_ref()) {
            let acme_node = node.and_then(|n| n.get("tls")).and_then(|t| t.get("acme"));
            let at = pos_of(acme_node, "ca", fallback);
            match certs::load_ca(ca) {
                Ok(list) if list.is_empty() => issues.push(
                    at,
                    format!("acme ca {}: no certificate in it", ca.display()),
                ),
                Ok(_) => {}
                Err(e) => issues.push(at, format!("acme: {e}")),
            }
        }
        if let Some(auth) = &tls.client_auth {
            if let Err(e) = super::client_auth::load_verifier(auth) {
                let auth_node = node
                    .and_then(|n| n.get("tls"))
                    .and_then(|t| t.get("client_auth"));
                let key = if e.is_crl() { "crl" } else { "ca" };
                issues.push(pos_of(auth_node, key, fallback), e.to_string());
            }
        }
        let mut names: HashSet<String> = HashSet::new();
        for (j, pair) in tls.certificates.iter().enumerate() {
            let pair_node = pair_nodes.get(j);
            let cert_pos = pos_of(pair_node, "cert", fallback);
            let key_pos = pos_of(pair_node, "key", fallback);
            match certs::load_pair(&pair.cert, &pair.key) {
                Ok(p) => {
                    if let Some(w) = p.validity_warning() {
                        warnings.push(cert_pos, format!("warning: {w}"));
                    }
                    let fresh = p
                        .names
                        .iter()
                        .filter(|n| names.insert((*n).clone()))
                        .count();
                    if j > 0 && fresh == 0 {
                        warnings.push(
                            cert_pos,
                            format!(
                                "warning: certificate {} adds no name to listener \"{}\" (SNI never selects it)",
                                pair.cert.display(),
                                l.name
                            ),
                        );
                    }
                }
                Err(e) => {
                    let at = match e.side() {
                        Side::Cert => cert_pos,
                        Side::Key => key_pos,
                    };
                    issues.push(at, e.to_string());
                }
            }
        }
    }
}

fn pools(root: &Node, config: &Config, issues: &mut Issues, warnings: &mut Issues) {
    // A valid config holds every pool of the file, in file order.
    let entries = root.get("pools").and_then(Node::as_map).unwrap_or_default();
    for (k, pool) in config.pools.iter().enumerate() {
        let Some(tls) = &pool.tls else {
            continue;
        };
        let node = entries.get(k).map(|(_, v)| v);
        let tls_node = node.and_then(|n| n.get("tls"));
        let tls_pos = tls_node.map_or(node.map_or(Pos::START, |n| n.pos), |t| t.pos);
        if !tls.verify {
            warnings.push(
                tls_pos,
                format!(
                    "warning: pool \"{}\": tls.verify is false: backend certificates are not checked",
                    pool.name
                ),
            );
        }
        if let Err(e) = client::client_config(tls, pool.protocol) {
            let at = match e.field() {
                Field::Tls => tls_pos,
                Field::Ca => pos_of(tls_node, "ca", tls_pos),
                Field::ClientCert => pos_of(tls_node, "client_cert", tls_pos),
                Field::ClientKey => pos_of(tls_node, "client_key", tls_pos),
            };
            issues.push(at, format!("pool \"{}\": {e}", pool.name));
        }
    }
}

/// `state.redis.tls`: the CA bundle and the client certificate must load.
fn redis(root: &Node, config: &Config, issues: &mut Issues) {
    let State::Redis(redis) = &config.state else {
        return;
    };
    let Some(tls) = &redis.tls else {
        return;
    };
    let node = root
        .get("state")
        .and_then(|s| s.get("redis"))
        .and_then(|r| r.get("tls"));
    let fallback = node.map_or(Pos::START, |n| n.pos);
    if let Some(ca) = &tls.ca {
        let at = pos_of(node, "ca", fallback);
        match certs::load_ca(ca) {
            Ok(list) if list.is_empty() => issues.push(
                at,
                format!("state.redis.tls.ca {}: no certificate in it", ca.display()),
            ),
            Ok(_) => {}
            Err(e) => issues.push(at, format!("state.redis.tls: {e}")),
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        if let Err(e) = certs::load_client_pair(cert, key) {
            let at = match e.side() {
                Side::Cert => pos_of(node, "client_cert", fallback),
                Side::Key => pos_of(node, "client_key", fallback),
            };
            issues.push(at, format!("state.redis.tls: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, column) of the first `needle` in `text`, 1-based.
    fn pos_of(text: &str, needle: &str) -> (u64, u64) {
        let at = text.find(needle).expect("needle");
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        (line as u64, column as u64)
    }

    fn errors_of(text: &str) -> ConfigErrors {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("autolb.yaml");
        std::fs::write(&path, text).expect("write");
        load(&path).expect_err("missing files")
    }

    #[test]
    fn a_missing_certificate_is_an_error_at_its_path() {
        let text = "listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    protocol: https\n    pool: p\n    tls:\n      certificates: [{ cert: certs/example.crt, key: certs/example.key }]\npools:\n  p: { backends: [{ address: 127.0.0.1:1 }] }\n";
        let e = errors_of(text);
        let at = pos_of(text, "certs/example.crt");
        assert!(
            e.0.iter()
                .any(|x| (x.line, x.column) == at && x.message.contains("cannot read certificate")),
            "{e}"
        );
    }

    #[test]
    fn missing_redis_tls_files_are_errors_at_their_paths() {
        let text = "listeners:\n  - { name: web, listen: 127.0.0.1:0, pool: p }\npools:\n  p: { backends: [{ address: 127.0.0.1:1 }] }\nstate:\n  backend: redis\n  redis:\n    url: \"rediss://h:6380\"\n    tls: { ca: certs/ca.pem, client_cert: /abs/c.pem, client_key: k.pem }\n";
        let e = errors_of(text);
        let at = pos_of(text, "certs/ca.pem");
        assert!(
            e.0.iter()
                .any(|x| (x.line, x.column) == at && x.message.contains("state.redis.tls")),
            "{e}"
        );
    }

    #[test]
    fn a_config_file_that_cannot_be_read_is_one_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.yaml");
        let e = load(&missing).expect_err("missing file");
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
        assert_eq!(e.0[0].file, missing.display().to_string());
        assert!(e.0[0].message.contains("cannot read"), "{e}");
    }
}
