//! Learned sticky sessions (`sticky: {learn_cookie: NAME}`): the value of the application's
//! own session cookie, seen in a backend's `Set-Cookie`, mapped to that backend's address in
//! the shared state (with a TTL), so that every node routes the session's later requests to
//! it (HAProxy stick tables, shared through Redis).
//!
//! A local cache answers first; an entry older than `RECHECK` (another node may have re-bound
//! the session) and a miss ask the shared state, bounded by `CALL_TIMEOUT` (and not at all
//! while it is not connected); stores run on background tasks. Without the shared state each
//! node honours what it knows, and a Redis that lost a session gets it back from the caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::{bounded, SharedState};
use crate::affinity::Resolved;
use crate::runtime::Pool;

/// A cached session is confirmed with the shared state after this long.
const RECHECK: Duration = Duration::from_secs(2);

/// Sessions kept in the local cache at most (expired ones go first, then all).
const CACHE_MAX: usize = 100_000;

struct Entry {
    address: String,
    expires: Instant,
    /// When this node last stored it in the shared state.
    stored: Instant,
    /// When the shared state last confirmed it (or this node stored it).
    checked: Instant,
}

/// The learned sessions of one autolb.
pub struct Learned {
    backend: Arc<dyn SharedState>,
    handle: tokio::runtime::Handle,
    cache: Mutex<HashMap<String, Entry>>,
}

/// The shared-state key of a session of `pool` (hashed: any cookie value is a short key).
fn key(pool: &str, value: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_128(value.as_bytes());
    format!("sticky:{pool}:{h:032x}")
}

impl Learned {
    /// Creates the store of one autolb (must run in tokio); the server hands it to every
    /// connection (`ConnContext::shared`).
    pub fn start(backend: Arc<dyn SharedState>) -> Arc<Learned> {
        Arc::new(Learned {
            backend,
            handle: tokio::runtime::Handle::current(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.cache.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The backend address session `value` of `pool` is bound to: the local cache, else (or
    /// when due for a check) the shared state, at most `CALL_TIMEOUT`.
    pub async fn lookup(&self, pool: &str, value: &str, ttl: Duration) -> Option<String> {
        let key = key(pool, value);
        let now = Instant::now();
        let cached = self
            .cache()
            .get(&key)
            .filter(|e| e.expires > now)
            .map(|e| (e.address.clone(), e.checked, e.expires));
        let connected = self.backend.connected();
        if let Some((address, checked, _)) = &cached {
            if !connected || now < *checked + RECHECK {
                return Some(address.clone());
            }
        }
        if !connected {
            return None;
        }
        match bounded(self.backend.get_kv(&key)).await {
            Ok(Some(address)) => {
                let expires = cached.as_ref().map_or(now + ttl, |c| c.2);
                self.insert(key, address.clone(), expires, now, now);
                Some(address)
            }
            Ok(None) => {
                // Expired there, or a Redis that restarted empty: store what we know again.
                let (address, _, expires) = cached?;
                self.insert(key.clone(), address.clone(), expires, now, now);
                self.store(key, address.clone(), expires.saturating_duration_since(now));
                Some(address)
            }
            Err(_) => cached.map(|c| c.0),
        }
    }

    /// Bind session `value` of `pool` to `address` for `ttl`, here at once and in the shared
    /// state in the background (again when half the ttl passed since this node stored it).
    pub fn learn(&self, pool: &str, value: &str, address: &str, ttl: Duration) {
        let key = key(pool, value);
        let now = Instant::now();
        let fresh = self
            .cache()
            .get(&key)
            .is_some_and(|e| e.address == address && now < e.stored + ttl / 2);
        if fresh {
            return;
        }
        self.insert(key.clone(), address.to_string(), now + ttl, now, now);
        self.store(key, address.to_string(), ttl);
    }

    /// Store a binding in the shared state, in the background.
    fn store(&self, key: String, address: String, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let backend = self.backend.clone();
        self.handle.spawn(async move {
            if let Err(e) = bounded(backend.put_kv(&key, address, ttl)).await {
                tracing::debug!(error = %e, "learned session kept node-local");
            }
        });
    }

    fn insert(
        &self,
        key: String,
        address: String,
        expires: Instant,
        stored: Instant,
        checked: Instant,
    ) {
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX && !cache.contains_key(&key) {
            let now = Instant::now();
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Entry {
                address,
                expires,
                stored,
                checked,
            },
        );
    }
}

/// What a request with a learned session needs once a backend answered.
pub struct Session {
    store: Arc<Learned>,
    /// The request's session, bound to a backend that could not take it: bind it to the
    /// one that answers (redispatch).
    rebind: Option<String>,
}

/// Pin a request of `pool` carrying a learned session to its backend while that one serves
/// pinned traffic (it overrides the other affinity keys); `None` when the pool learns no
/// cookie. Waits for the shared state at most `CALL_TIMEOUT`, only on a cache miss.
pub async fn resolve(
    store: &Arc<Learned>,
    pool: &Pool,
    headers: &HeaderMap,
    resolved: &mut Resolved,
    panic: bool,
) -> Option<Session> {
    let affinity = pool.affinity.as_ref()?;
    let (_, ttl) = affinity.learn_cookie()?;
    let mut rebind = None;
    if let Some(value) = affinity.learned_value(headers) {
        if let Some(address) = store.lookup(&pool.name, &value, ttl).await {
            if !affinity.pin_address(resolved, &address, &pool.backends, panic) {
                rebind = Some(value);
            }
        }
    }
    Some(Session {
        store: store.clone(),
        rebind,
    })
}

impl Session {
    /// Backend `idx` of `pool` answered with `headers`: learn the session it sets, or bind
    /// the redispatched one to it.
    pub fn observe(&self, pool: &Pool, idx: usize, headers: &HeaderMap) {
        let (Some(affinity), Some(backend)) = (pool.affinity.as_ref(), pool.backends.get(idx))
        else {
            return;
        };
        let Some((_, ttl)) = affinity.learn_cookie() else {
            return;
        };
        let value = affinity.learned_from_response(headers);
        if let Some(value) = value.as_ref().or(self.rebind.as_ref()) {
            self.store.learn(&pool.name, value, &backend.address, ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_learned_by_one_node_are_seen_by_another() {
        let shared: Arc<dyn SharedState> = Arc::new(super::super::memory::MemoryState::default());
        let mk = || Learned {
            backend: shared.clone(),
            handle: tokio::runtime::Handle::current(),
            cache: Mutex::new(HashMap::new()),
        };
        let (a, b) = (mk(), mk());
        let ttl = Duration::from_secs(60);
        assert_eq!(b.lookup("web", "s1", ttl).await, None);
        a.learn("web", "s1", "10.0.0.1:80", ttl);
        assert_eq!(
            a.lookup("web", "s1", ttl).await.as_deref(),
            Some("10.0.0.1:80")
        );
        // The store runs in the background.
        for _ in 0..100 {
            if b.lookup("web", "s1", ttl).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            b.lookup("web", "s1", ttl).await.as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(b.lookup("other", "s1", ttl).await, None);
    }
}
