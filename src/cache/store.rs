//! The store: stored responses in memory, bounded in bytes by moka (TinyLFU admission, LRU
//! eviction), one entry per primary key holding that resource's `Vary` variants.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use super::key::{vary_names, vary_values, Primary};
use super::policy::Meta;

/// Variants kept per resource (more `Vary` combinations replace the oldest).
const MAX_VARIANTS: usize = 16;
/// What an entry costs beyond its bodies and fields (the structs, moka's node, the key).
const OVERHEAD: usize = 256;

/// One stored response.
#[derive(Debug)]
pub struct Object {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub meta: Meta,
    /// Its `Vary` field names and the request's normalized values of them.
    pub vary: Vec<HeaderName>,
    pub selecting: Vec<Option<String>>,
}

impl Object {
    fn weight(&self) -> usize {
        let fields: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + fields + OVERHEAD
    }

    /// Whether this variant answers a request with `request` fields.
    pub fn selected_by(&self, request: &HeaderMap) -> bool {
        self.vary.is_empty() || vary_values(&self.vary, request) == self.selecting
    }
}

/// A resource: what purges match, and its variants.
#[derive(Debug)]
pub struct Entry {
    pub primary: Primary,
    pub variants: Vec<Arc<Object>>,
}

/// The bounded map from primary keys to entries.
pub struct Store {
    map: moka::sync::Cache<String, Arc<Entry>>,
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Purge {
    /// One resource by its path and query on a host (every scheme, port and variant).
    Url {
        host: String,
        path_and_query: String,
    },
    /// Everything under `path_prefix` (all paths when empty) on `host` (every host when
    /// empty).
    Prefix { host: String, path_prefix: String },
}

impl Purge {
    fn matches(&self, p: &Primary) -> bool {
        match self {
            Purge::Url {
                host,
                path_and_query,
            } => p.host == *host && p.path_and_query == *path_and_query,
            Purge::Prefix { host, path_prefix } => {
                (host.is_empty() || p.host == *host)
                    && p.path_and_query.starts_with(path_prefix.as_str())
            }
        }
    }
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        let map = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|_k: &String, e: &Arc<Entry>| {
                let w: usize =
                    e.variants.iter().map(|o| o.weight()).sum::<usize>() + e.primary.key.len();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build();
        Store { map }
    }

    /// The variant of `primary` that `request` selects.
    pub fn get(&self, primary: &str, request: &HeaderMap) -> Option<Arc<Object>> {
        let entry = self.map.get(primary)?;
        entry
            .variants
            .iter()
            .find(|o| o.selected_by(request))
            .cloned()
    }

    /// Store `object` for `primary` as the variant its `Vary` selects, replacing the one it
    /// freshens or supersedes.
    pub fn insert(&self, primary: &Primary, object: Arc<Object>) {
        let mut variants = vec![object.clone()];
        if let Some(old) = self.map.get(&primary.key) {
            variants.extend(
                old.variants
                    .iter()
                    .filter(|o| !(o.vary == object.vary && o.selecting == object.selecting))
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        let entry = Entry {
            primary: primary.clone(),
            variants,
        };
        self.map.insert(primary.key.clone(), Arc::new(entry));
    }

    /// Forget every variant of `primary` (an unsafe method changed it, or it was purged).
    pub fn remove(&self, primary: &str) {
        self.map.invalidate(primary);
    }

    /// Forget one variant (the backend no longer allows storing it).
    pub fn remove_variant(&self, primary: &Primary, object: &Arc<Object>) {
        if let Some(old) = self.map.get(&primary.key) {
            let variants: Vec<_> = old
                .variants
                .iter()
                .filter(|o| !Arc::ptr_eq(o, object))
                .cloned()
                .collect();
            match variants.is_empty() {
                true => self.map.invalidate(&primary.key),
                false => self.map.insert(
                    primary.key.clone(),
                    Arc::new(Entry {
                        primary: primary.clone(),
                        variants,
                    }),
                ),
            }
        }
    }

    /// Remove what `purge` matches; lookups stop finding it at once.
    pub fn purge(&self, purge: &Purge) {
        let purge = purge.clone();
        if let Err(e) = self
            .map
            .invalidate_entries_if(move |_k, e| purge.matches(&e.primary))
        {
            tracing::warn!(error = %e, "cache purge failed");
        }
    }

    /// Bytes held (as weighed) and resources stored, after pending evictions are applied.
    pub fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.weighted_size(), self.map.entry_count())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The object a stored `status`, `headers` and `body` make for a request with `request`
/// fields.
pub fn object(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    meta: Meta,
    request: &HeaderMap,
) -> Object {
    let vary = vary_names(&headers);
    let selecting = vary_values(&vary, request);
    Object {
        status,
        headers,
        body,
        meta,
        vary,
        selecting,
    }
}

impl Purge {
    /// The admin API's form of this purge (what `from_json` reads back).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Purge::Url {
                host,
                path_and_query,
            } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                serde_json::json!({ "url": format!("http://{host}{path_and_query}") })
            }
            Purge::Prefix { host, path_prefix } if path_prefix.is_empty() => {
                serde_json::json!({ "host": host })
            }
            Purge::Prefix { host, path_prefix } => {
                serde_json::json!({ "host": host, "path_prefix": path_prefix })
            }
        }
    }

    /// A purge as the admin API takes it: `{"url"}` (absolute: scheme and host) or
    /// `{"host", "path_prefix"}` (at least one of them).
    pub fn from_json(v: &serde_json::Value) -> Result<Purge, String> {
        let Some(obj) = v.as_object() else {
            return Err("expected a JSON object: {\"url\"} or {\"host\", \"path_prefix\"}".into());
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["url", "host", "path_prefix"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field \"{k}\" (expected url, or host and path_prefix)"
            ));
        }
        let text = |key: &str| -> Result<Option<&str>, String> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("\"{key}\" must be a string")),
            }
        };
        let (url, host, prefix) = (text("url")?, text("host")?, text("path_prefix")?);
        match (url, host, prefix) {
            (Some(url), None, None) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| format!("\"url\" is not a valid URL: {url}"))?;
                let host = uri.host().ok_or_else(|| {
                    format!("\"url\" needs a scheme and a host (http://host/path): {url}")
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Ok(Purge::Url {
                    host: host.to_ascii_lowercase(),
                    path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
                })
            }
            (Some(_), _, _) => {
                Err("give either \"url\" or \"host\"/\"path_prefix\", not both".into())
            }
            (None, None, None) => {
                Err("\"url\", or \"host\" and/or \"path_prefix\", is required".into())
            }
            (None, host, prefix) => {
                if prefix.is_some_and(|p| !p.starts_with('/')) {
                    return Err("\"path_prefix\" must start with /".into());
                }
                Ok(Purge::Prefix {
                    host: host
                        .unwrap_or("")
                        .trim()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                    path_prefix: prefix.unwrap_or("").to_string(),
                })
            }
        }
    }
}
