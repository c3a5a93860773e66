//! The files a config names (listener certificates and keys, client CA bundles and CRLs,
//! pool, Redis and ACME CA bundles and client certificates), read and checked when a config
//! *file* is loaded: each problem is reported at the line and column of the path that names
//! the file; an expired certificate is only a warning (it is served, as HAProxy does).

use std::collections::HashSet;

use super::error::{Issues, Pos};
use super::model::{Config, State};
use super::node::{self, Node, Value};
use super::{ConfigError, ConfigErrors};
use crate::tls::certs::{self, Side};
use crate::tls::client::{self, Field};

fn items(node: Option<&Node>) -> &[Node] {
    match node.map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

fn pos_of(node: Option<&Node>, key: &str, fallback: Pos) -> Pos {
    node.and_then(|n| n.get(key)).map_or(fallback, |n| n.pos)
}

/// Check every file `config` (loaded from `text`) names. `Ok` carries the warnings.
pub(crate) fn check(text: &str, config: &Config) -> Result<Vec<ConfigError>, ConfigErrors> {
    let file = config.source.display().to_string();
    let Ok(root) = node::parse(text) else {
        return Ok(Vec::new());
    };
    let mut issues = Issues::new();
    let mut warnings = Issues::new();
    listeners(&root, config, &mut issues, &mut warnings);
    pools(&root, config, &mut issues, &mut warnings);
    redis(&root, config, &mut issues);
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
            if let Err(e) = crate::tls::client_auth::load_verifier(auth) {
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
