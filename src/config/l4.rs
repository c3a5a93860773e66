//! L4 settings: a listener's `accept_proxy` and `sni_routes` (TLS passthrough by SNI), a
//! pool's `send_proxy: v1|v2` and a backend's `max_connections`: file types, model and checks.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::{Issues, Pos};
use super::file::ListenerFile;
use super::model::Protocol;
use super::node::Located;

/// A PROXY protocol version (`send_proxy: v1 | v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The human-readable text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// One `sni_routes` entry: a server name (lower-case; a leading `*.` matches subdomains)
/// and the pool its connections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    pub name: String,
    pub pool: String,
}

impl SniRoute {
    /// Does `sni` (any case) match this route's name?
    pub fn matches(&self, sni: &str) -> bool {
        match self.name.strip_prefix("*.") {
            Some(suffix) => {
                sni.len() > suffix.len() + 1
                    && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
                    && sni[sni.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            None => sni.eq_ignore_ascii_case(&self.name),
        }
    }
}

/// `sni_routes:` as written: a mapping of server names to pools, in file order.
#[derive(Debug, Default)]
pub struct SniRoutesFile(pub Vec<(Located<String>, Located<String>)>);

impl<'de> Deserialize<'de> for SniRoutesFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RoutesVisitor;

        impl<'de> Visitor<'de> for RoutesVisitor {
            type Value = SniRoutesFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an sni_routes mapping (server name: pool)")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SniRoutesFile, A::Error> {
                let mut routes = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    routes.push(entry);
                }
                Ok(SniRoutesFile(routes))
            }
        }

        d.deserialize_map(RoutesVisitor)
    }
}

/// A listener's L4 settings, with the positions of the pools its SNI routes name.
#[derive(Debug, Default)]
pub(crate) struct ListenerL4 {
    pub accept_proxy: bool,
    pub sni_routes: Vec<SniRoute>,
    pub sni_pool_pos: Vec<Pos>,
}

/// A server name as `sni_routes` accepts it: `host.name` or `*.host.name`.
fn valid_server_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `accept_proxy` and `sni_routes` of one listener.
pub(crate) fn listener_l4(
    file: &ListenerFile,
    protocol: Protocol,
    issues: &mut Issues,
) -> ListenerL4 {
    let mut out = ListenerL4 {
        accept_proxy: file.accept_proxy.as_ref().is_some_and(|a| a.value),
        ..Default::default()
    };
    let Some(routes) = &file.sni_routes else {
        return out;
    };
    if protocol != Protocol::Tcp {
        issues.push(
            routes.pos,
            format!(
                "sni_routes is only allowed on tcp listeners (listener \"{}\"); https listeners pick certificates by SNI and route by host",
                file.name.value.trim()
            ),
        );
        return out;
    }
    for (name, pool) in &routes.value.0 {
        let n = name.value.trim().to_ascii_lowercase();
        if !valid_server_name(&n) {
            issues.push(
                name.pos,
                format!(
                    "invalid server name \"{}\" in sni_routes (a host name, or *.domain)",
                    name.value
                ),
            );
            continue;
        }
        if out.sni_routes.iter().any(|r| r.name == n) {
            issues.push(
                name.pos,
                format!("duplicate server name \"{n}\" in sni_routes"),
            );
            continue;
        }
        let p = pool.value.trim();
        if p.is_empty() {
            issues.push(pool.pos, "sni_routes pool must not be empty");
            continue;
        }
        out.sni_routes.push(SniRoute {
            name: n,
            pool: p.to_string(),
        });
        out.sni_pool_pos.push(pool.pos);
    }
    out
}

/// `max_connections` of a backend: at least 1.
pub(crate) fn max_connections(field: &Option<Located<u32>>, issues: &mut Issues) -> Option<u32> {
    match field {
        Some(m) if m.value == 0 => {
            issues.push(m.pos, "max_connections must be at least 1");
            None
        }
        Some(m) => Some(m.value),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::{assert_error, load};

    const BASE: &str = "listeners:
  - name: t
    listen: 127.0.0.1:7000
    protocol: tcp
    accept_proxy: true
    sni_routes: { a.example.com: a, \"*.b.example.com\": a }
pools:
  a:
    send_proxy: v2
    backends: [{ address: 127.0.0.1:7001, max_connections: 3 }]
";

    #[test]
    fn l4_keys_are_read() {
        let c = load(BASE).expect("valid");
        let l = &c.listeners[0];
        assert!(l.accept_proxy);
        assert_eq!(l.pool, None, "sni_routes cover a tcp listener without pool");
        assert_eq!(l.sni_routes.len(), 2);
        assert_eq!(l.sni_routes[1].name, "*.b.example.com");
        assert_eq!(c.pools[0].send_proxy, Some(ProxyVersion::V2));
        assert_eq!(c.pools[0].backends[0].max_connections, Some(3));
    }

    #[test]
    fn l4_errors_point_at_their_value() {
        let y = BASE.replace("a.example.com: a,", "a.example.com: nope,");
        assert_error(&y, "nope", "unknown pool \"nope\"");
        let y = BASE.replace("a.example.com: a,", "\"a b\": a,");
        assert_error(&y, "\"a b\"", "invalid server name");
        let y = BASE.replace("max_connections: 3", "max_connections: 0");
        assert_error(&y, "0 }", "max_connections must be at least 1");
        let y = BASE.replace("send_proxy: v2", "send_proxy: v3");
        assert_error(&y, "v3", "expected one of: v1, v2");
        let y = BASE.replace("protocol: tcp", "protocol: http\n    pool: a");
        assert_error(&y, "{ a.example.com", "only allowed on tcp listeners");
        let y = BASE.replace(
            "    sni_routes: { a.example.com: a, \"*.b.example.com\": a }\n",
            "",
        );
        assert_error(&y, "name: t", "needs a pool (or sni_routes)");
    }

    #[test]
    fn server_names_and_matching() {
        assert!(valid_server_name("db.example.com"));
        assert!(valid_server_name("*.example.com"));
        assert!(!valid_server_name("*"));
        assert!(!valid_server_name("a..b"));
        assert!(!valid_server_name("a b"));
        assert!(!valid_server_name("x.*.com"));
        let wild = SniRoute {
            name: "*.example.com".into(),
            pool: "p".into(),
        };
        assert!(wild.matches("a.EXAMPLE.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("aexample.com"));
        let exact = SniRoute {
            name: "db.example.com".into(),
            pool: "p".into(),
        };
        assert!(exact.matches("DB.example.com"));
        assert!(!exact.matches("x.db.example.com"));
    }
}
