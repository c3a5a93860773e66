//! `state:`: the shared-state backend, `memory` (one node) or `redis` reached through seed
//! URLs (`url`, `urls`: standalone Redis or Redis Cluster) or Sentinel (`sentinels`,
//! `master_name`), with `tls` and `password_env`. Files named here are read by `tls::config_files`.

use std::path::PathBuf;

use serde::Deserialize;

use super::error::Issues;
use super::node::Located;

/// A validated `state:`.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Memory,
    Redis(Redis),
}

/// `state.redis`: where the shared state lives and how autolb reaches it.
#[derive(Clone, PartialEq)]
pub struct Redis {
    /// `url` or `urls`: seed URLs, tried in order (empty with Sentinel). They share scheme
    /// and credentials.
    pub urls: Vec<String>,
    /// `sentinels` with `master_name`.
    pub sentinel: Option<Sentinel>,
    /// TLS: `rediss://` URLs, or a `tls:` block (Sentinel).
    pub tls: Option<RedisTls>,
    /// The environment variable that holds the password (read at start).
    pub password_env: Option<String>,
}

impl std::fmt::Debug for Redis {
    // URLs may carry a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("Redis")
            .field("urls", &urls)
            .field("sentinel", &self.sentinel)
            .field("tls", &self.tls)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// Sentinels (`host:port`) and the name of the master they watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentinel {
    pub sentinels: Vec<String>,
    pub master_name: String,
}

/// `state.redis.tls`: CA bundle (else the system's), client certificate, server name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name sent (SNI) and verified instead of the address's host.
    pub sni: Option<String>,
}

/// `redis://user:secret@host` -> `redis://***@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendFile {
    Memory,
    Redis,
}

/// `state:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a state mapping (backend, redis)")]
pub struct StateFile {
    pub backend: Option<Located<StateBackendFile>>,
    pub redis: Option<Located<RedisFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a redis mapping (url, urls, sentinels, master_name, tls, password_env)"
)]
pub struct RedisFile {
    pub url: Option<Located<String>>,
    pub urls: Option<Located<Vec<Located<String>>>>,
    pub sentinels: Option<Located<Vec<Located<String>>>>,
    pub master_name: Option<Located<String>>,
    pub tls: Option<Located<RedisTlsFile>>,
    pub password_env: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a redis tls mapping (ca, client_cert, client_key, sni)"
)]
pub struct RedisTlsFile {
    pub ca: Option<Located<String>>,
    pub client_cert: Option<Located<String>>,
    pub client_key: Option<Located<String>>,
    pub sni: Option<Located<String>>,
}

/// Validates `state:`; `None` when it has errors (each pushed to `issues`).
pub(crate) fn state(file: StateFile, issues: &mut Issues) -> Option<State> {
    let redis = match (file.redis, file.backend) {
        (
            redis,
            None
            | Some(Located {
                value: StateBackendFile::Memory,
                ..
            }),
        ) => {
            // Checked all the same, so that a typo does not wait for the switch to redis.
            let before = issues.len();
            if let Some(r) = redis {
                redis_settings(r, issues);
            }
            return (issues.len() == before).then_some(State::Memory);
        }
        (None, Some(b)) => {
            issues.push(
                b.pos,
                "state backend redis needs redis.url, redis.urls or redis.sentinels",
            );
            return None;
        }
        (Some(r), Some(_)) => r,
    };
    redis_settings(redis, issues).map(State::Redis)
}

fn redis_settings(file: Located<RedisFile>, issues: &mut Issues) -> Option<Redis> {
    let before = issues.len();
    let at = file.pos;
    let f = file.value;
    let urls: Vec<Located<String>> = match (f.url, f.urls) {
        (Some(_), Some(list)) => {
            issues.push(
                list.pos,
                "set either url (one seed) or urls (several), not both",
            );
            Vec::new()
        }
        (Some(u), None) => vec![u],
        (None, Some(list)) => {
            if list.value.is_empty() {
                issues.push(list.pos, "urls must list at least one redis:// URL");
            }
            list.value
        }
        (None, None) => Vec::new(),
    };
    let mut parsed = Vec::new();
    for u in &urls {
        match check_url(&u.value) {
            Ok(p) => parsed.push((u.pos, p)),
            Err(e) => issues.push(u.pos, e),
        }
    }
    if let Some(((_, first), rest)) = parsed.split_first() {
        for (pos, p) in rest {
            if p.tls != first.tls {
                issues.push(*pos, "urls mix redis:// and rediss://");
            } else if p.credentials != first.credentials {
                issues.push(*pos, "urls must carry the same user and password");
            }
        }
    }
    let sentinel = sentinel(f.sentinels, f.master_name, issues);
    if sentinel.is_some() && !urls.is_empty() {
        issues.push(
            at,
            "set either url/urls (standalone or Redis Cluster) or sentinels, not both",
        );
    }
    if sentinel.is_none() && urls.is_empty() && issues.len() == before {
        issues.push(at, "redis needs url, urls or sentinels with master_name");
    }
    let tls = f.tls.map(|t| {
        if parsed.first().is_some_and(|(_, p)| !p.tls) {
            issues.push(t.pos, "tls needs rediss:// URLs");
        }
        tls(&t.value, issues)
    });
    let tls = match (tls, parsed.first()) {
        (None, Some((_, p))) if p.tls => Some(RedisTls::default()),
        (t, _) => t,
    };
    let password_env = f.password_env.and_then(|p| {
        let name = p.value.trim();
        let valid = !name.is_empty()
            && !name.contains('=')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            issues.push(p.pos, format!("invalid password_env \"{}\"", p.value));
        }
        valid.then(|| name.to_string())
    });
    if issues.len() != before {
        return None;
    }
    Some(Redis {
        urls: urls
            .into_iter()
            .map(|u| u.value.trim().to_string())
            .collect(),
        sentinel,
        tls,
        password_env,
    })
}

struct UrlFacts {
    tls: bool,
    credentials: (Option<String>, Option<String>),
}

fn check_url(url: &str) -> Result<UrlFacts, String> {
    let url = url.trim();
    let tls = url.starts_with("rediss://");
    if !(tls || url.starts_with("redis://")) {
        return Err(format!(
            "invalid redis url \"{}\" (expected redis:// or rediss://)",
            redact(url)
        ));
    }
    let info = ::redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("invalid redis url \"{}\": {e}", redact(url)))?;
    let r = info.redis_settings();
    if r.db() != 0 {
        return Err(format!(
            "redis url \"{}\": autolb uses database 0 (Redis Cluster has no other)",
            redact(url)
        ));
    }
    Ok(UrlFacts {
        tls,
        credentials: (
            r.username().map(String::from),
            r.password().map(String::from),
        ),
    })
}

fn sentinel(
    list: Option<Located<Vec<Located<String>>>>,
    name: Option<Located<String>>,
    issues: &mut Issues,
) -> Option<Sentinel> {
    match (list, name) {
        (None, None) => None,
        (Some(l), None) => {
            issues.push(l.pos, "sentinels need master_name");
            None
        }
        (None, Some(n)) => {
            issues.push(n.pos, "master_name needs sentinels");
            None
        }
        (Some(l), Some(n)) => {
            if l.value.is_empty() {
                issues.push(l.pos, "sentinels must list at least one host:port");
            }
            for s in &l.value {
                if host_port(&s.value).is_none() {
                    issues.push(
                        s.pos,
                        format!("invalid sentinel \"{}\" (expected host:port)", s.value),
                    );
                }
            }
            let master_name = n.value.trim().to_string();
            if master_name.is_empty() || master_name.contains(char::is_whitespace) {
                issues.push(n.pos, format!("invalid master_name \"{}\"", n.value));
            }
            Some(Sentinel {
                sentinels: l.value.into_iter().map(|s| s.value.trim().into()).collect(),
                master_name,
            })
        }
    }
}

/// `host:port` or `[v6]:port` -> (host, port).
pub fn host_port(text: &str) -> Option<(String, u16)> {
    let text = text.trim();
    let (host, port) = text.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| (host.to_string(), port))
}

fn tls(file: &RedisTlsFile, issues: &mut Issues) -> RedisTls {
    let c = super::tls::client_tls(
        [&file.ca, &file.client_cert, &file.client_key],
        &file.sni,
        issues,
    );
    RedisTls {
        ca: c.ca,
        client_cert: c.client_cert,
        client_key: c.client_key,
        sni: c.sni,
    }
}
