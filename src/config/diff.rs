//! What changed between two validated configs, in words, for the reload log and the
//! answer of `POST /config/reload`. It names things (pools, backends, listeners, routes,
//! certificate files), never secrets.

use super::model::{Config, Listener, Pool};

/// The changes, one short sentence each, in a stable order.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.threads != new.threads {
        out.push(format!(
            "threads: {} -> {} (applies at the next restart)",
            old.threads, new.threads
        ));
    }
    if (&old.admin.listen, &old.admin.token_env) != (&new.admin.listen, &new.admin.token_env) {
        out.push("admin settings changed (apply at the next restart)".into());
    }
    if old.admin.ready_requires_backend != new.admin.ready_requires_backend {
        out.push(format!(
            "admin ready_requires_backend: {} -> {}",
            old.admin.ready_requires_backend, new.admin.ready_requires_backend
        ));
    }
    if old.shutdown_grace != new.shutdown_grace {
        out.push(format!(
            "shutdown_grace: {:?} -> {:?}",
            old.shutdown_grace, new.shutdown_grace
        ));
    }
    for l in &new.listeners {
        let acme = |c: &Config| {
            c.listeners
                .iter()
                .find(|o| o.name == l.name)
                .and_then(|o| o.tls.as_ref()?.acme.clone())
        };
        if acme(old) != acme(new) {
            out.push(format!(
                "listener {}: tls.acme changed (applies at the next restart)",
                l.name
            ));
        }
    }
    listeners(&old.listeners, &new.listeners, &mut out);
    if old.routes != new.routes {
        out.push(format!(
            "routes: {} -> {} ({})",
            old.routes.len(),
            new.routes.len(),
            new.routes
                .iter()
                .map(|r| format!(
                    "{}{} => {}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix.as_deref().unwrap_or(""),
                    r.pool
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in &new.pools {
        match old.pools.iter().find(|o| o.name == p.name) {
            None => out.push(format!(
                "pool {} added ({} backends)",
                p.name,
                p.backends.len()
            )),
            Some(o) => pool(o, p, &mut out),
        }
    }
    for o in &old.pools {
        if !new.pools.iter().any(|p| p.name == o.name) {
            out.push(format!("pool {} removed", o.name));
        }
    }
    if old.state != new.state {
        out.push("state backend changed".into());
    }
    if old.access_log != new.access_log {
        out.push(match &new.access_log {
            Some(_) => "access_log settings changed".into(),
            None => "access_log turned off".into(),
        });
    }
    if old.alerts != new.alerts {
        out.push(match &new.alerts {
            Some(a) => {
                let mut to = Vec::new();
                if let Some(w) = &a.webhook {
                    to.push(format!("webhook {}", w.redacted()));
                }
                if let Some(e) = &a.email {
                    to.push(format!(
                        "email via {}:{} to {}",
                        e.host,
                        e.port,
                        e.to.join(", ")
                    ));
                }
                format!("alerts: {}", to.join(", "))
            }
            None => "alerts turned off".into(),
        });
    }
    out
}

fn listeners(old: &[Listener], new: &[Listener], out: &mut Vec<String>) {
    for l in new {
        match old.iter().find(|o| o.name == l.name) {
            None => out.push(format!("listener {} added on {}", l.name, l.listen)),
            Some(o) => {
                if o.listen != l.listen || o.protocol != l.protocol {
                    out.push(format!(
                        "listener {}: {} {:?} -> {} {:?}",
                        l.name, o.listen, o.protocol, l.listen, l.protocol
                    ));
                }
                if o.pool != l.pool {
                    out.push(format!(
                        "listener {}: pool {} -> {}",
                        l.name,
                        o.pool.as_deref().unwrap_or("-"),
                        l.pool.as_deref().unwrap_or("-")
                    ));
                }
                let certs = |x: &Listener| {
                    x.tls.as_ref().map(|t| {
                        t.certificates
                            .iter()
                            .map(|c| c.cert.display().to_string())
                            .collect::<Vec<_>>()
                    })
                };
                if certs(o) != certs(l) {
                    out.push(format!(
                        "listener {}: certificates {:?} -> {:?}",
                        l.name,
                        certs(o).unwrap_or_default(),
                        certs(l).unwrap_or_default()
                    ));
                }
                let rest_changed = o.trusted_proxies != l.trusted_proxies
                    || o.idle_timeout != l.idle_timeout
                    || o.h2c != l.h2c
                    || o.reuse_port != l.reuse_port
                    || o.http3 != l.http3
                    || o.redirect_https != l.redirect_https
                    || o.hsts != l.hsts
                    || o.normalize != l.normalize
                    || o.tls.as_ref().map(|t| (&t.alpn, t.strict_sni))
                        != l.tls.as_ref().map(|t| (&t.alpn, t.strict_sni));
                if rest_changed {
                    out.push(format!("listener {}: settings changed", l.name));
                }
            }
        }
    }
    for o in old {
        if !new.iter().any(|l| l.name == o.name) {
            out.push(format!("listener {} removed from {}", o.name, o.listen));
        }
    }
}

fn pool(o: &Pool, p: &Pool, out: &mut Vec<String>) {
    let name = &p.name;
    if o.balance != p.balance {
        out.push(format!(
            "pool {name}: balance {} -> {}",
            o.balance.name(),
            p.balance.name()
        ));
    }
    for b in &p.backends {
        match o.backends.iter().find(|x| x.address == b.address) {
            None => out.push(format!("pool {name}: backend {} added", b.address)),
            Some(x) => {
                if x.weight != b.weight {
                    out.push(format!(
                        "pool {name}: backend {} weight {} -> {}",
                        b.address, x.weight, b.weight
                    ));
                }
                if x.disabled != b.disabled {
                    let state = if b.disabled { "disabled" } else { "enabled" };
                    out.push(format!("pool {name}: backend {} {state}", b.address));
                }
            }
        }
    }
    for x in &o.backends {
        if !p.backends.iter().any(|b| b.address == x.address) {
            out.push(format!(
                "pool {name}: backend {} removed (drains)",
                x.address
            ));
        }
    }
    let parts: [(&str, bool); 11] = [
        ("hash_key", o.hash_key != p.hash_key),
        ("limits", o.limits != p.limits),
        ("compress", o.compress != p.compress),
        ("cache", o.cache != p.cache),
        ("sticky", o.sticky != p.sticky),
        ("health_check", o.health_check != p.health_check),
        ("outlier", o.outlier != p.outlier),
        (
            "retries",
            o.retries != p.retries
                || o.retry_methods != p.retry_methods
                || o.retry_on != p.retry_on,
        ),
        ("timeouts", o.timeouts != p.timeouts),
        ("autoscale", o.autoscale != p.autoscale),
        (
            "slow_start/panic",
            o.slow_start != p.slow_start || o.panic_threshold != p.panic_threshold,
        ),
    ];
    for (what, changed) in parts {
        if changed {
            out.push(format!("pool {name}: {what} changed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(yaml: &str) -> Config {
        super::super::load_str(yaml, Path::new("t.yaml")).expect("valid")
    }

    const OLD: &str = "listeners:
  - { name: web, listen: 127.0.0.1:8080, pool: web }
pools:
  web:
    balance: round_robin
    backends:
      - { address: 127.0.0.1:3001 }
      - { address: 127.0.0.1:3002, weight: 2 }
";

    #[test]
    fn names_every_change_and_nothing_else() {
        assert!(diff(&load(OLD), &load(OLD)).is_empty());
        let new = "listeners:
  - { name: web, listen: 127.0.0.1:8080, pool: web }
  - { name: alt, listen: 127.0.0.1:8081, pool: api }
routes:
  - { path_prefix: /api, pool: api }
pools:
  web:
    balance: least_conn
    backends:
      - { address: 127.0.0.1:3002, weight: 5 }
      - { address: 127.0.0.1:3003 }
  api:
    backends: [ { address: 127.0.0.1:4001 } ]
";
        let d = diff(&load(OLD), &load(new));
        assert_eq!(
            d,
            vec![
                "listener alt added on 127.0.0.1:8081",
                "routes: 0 -> 1 (*/api => api)",
                "pool web: balance round_robin -> least_conn",
                "pool web: backend 127.0.0.1:3002 weight 2 -> 5",
                "pool web: backend 127.0.0.1:3003 added",
                "pool web: backend 127.0.0.1:3001 removed (drains)",
                "pool api added (1 backends)",
            ]
        );
    }
}
