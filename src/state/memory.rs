//! The `memory` backend: shared state kept in this process (one node, no Redis).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BackendStatus, Lease, SharedState, StateError, StateFuture};

#[derive(Default)]
struct Inner {
    /// group -> id -> (value, expiry)
    members: HashMap<String, HashMap<String, (String, Instant)>>,
    /// key -> (used, expiry)
    counters: HashMap<String, (u64, Instant)>,
    /// lease -> (holder, expiry)
    leases: HashMap<String, (String, Instant)>,
    /// lease -> newest fencing token (never decreases)
    tokens: HashMap<String, u64>,
    /// lease -> (fenced value, expiry)
    fenced: HashMap<String, (String, Instant)>,
    /// key -> (value, expiry)
    kv: HashMap<String, (String, Instant)>,
}

/// In-process state: always connected.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

impl MemoryState {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl SharedState for MemoryState {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn connected(&self) -> bool {
        true
    }

    fn put_member(
        &self,
        group: &str,
        id: &str,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, ()> {
        let now = Instant::now();
        self.with(|i| {
            let g = i.members.entry(group.to_string()).or_default();
            g.retain(|_, (_, exp)| *exp > now);
            g.insert(id.to_string(), (value, now + ttl));
        });
        Box::pin(async { Ok(()) })
    }

    fn members(&self, group: &str) -> StateFuture<'_, Vec<(String, String)>> {
        let now = Instant::now();
        let list = self.with(|i| {
            i.members.get(group).map_or_else(Vec::new, |g| {
                g.iter()
                    .filter(|(_, (_, exp))| *exp > now)
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect()
            })
        });
        Box::pin(async move { Ok(list) })
    }

    fn remove_member(&self, group: &str, id: &str) -> StateFuture<'_, ()> {
        self.with(|i| {
            if let Some(g) = i.members.get_mut(group) {
                g.remove(id);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn take(&self, key: &str, want: u64, limit: u64, ttl: Duration) -> StateFuture<'_, u64> {
        let now = Instant::now();
        let granted = self.with(|i| {
            i.counters.retain(|_, (_, exp)| *exp > now);
            let (used, _) = i.counters.entry(key.to_string()).or_insert((0, now + ttl));
            let grant = want.min(limit.saturating_sub(*used));
            *used += grant;
            grant
        });
        Box::pin(async move { Ok(granted) })
    }

    fn lease(&self, name: &str, holder: &str, ttl: Duration) -> StateFuture<'_, Lease> {
        let now = Instant::now();
        let lease = self.with(|i| {
            let token = i.tokens.entry(name.to_string()).or_insert(0);
            match i.leases.get_mut(name) {
                Some((h, exp)) if *exp > now => {
                    if h == holder {
                        *exp = now + ttl;
                    }
                    Lease {
                        holder: h.clone(),
                        token: *token,
                    }
                }
                _ => {
                    *token += 1;
                    i.leases
                        .insert(name.to_string(), (holder.to_string(), now + ttl));
                    Lease {
                        holder: holder.to_string(),
                        token: *token,
                    }
                }
            }
        });
        Box::pin(async move { Ok(lease) })
    }

    fn put_fenced(
        &self,
        name: &str,
        token: u64,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, bool> {
        let now = Instant::now();
        let stored = self.with(|i| {
            if i.tokens.get(name).copied().unwrap_or(0) != token {
                return false;
            }
            i.fenced.insert(name.to_string(), (value, now + ttl));
            true
        });
        Box::pin(async move { Ok(stored) })
    }

    fn get_fenced(&self, name: &str) -> StateFuture<'_, Option<String>> {
        let now = Instant::now();
        let value = self.with(|i| {
            i.fenced
                .get(name)
                .filter(|(_, exp)| *exp > now)
                .map(|(v, _)| v.clone())
        });
        Box::pin(async move { Ok(value) })
    }

    fn put_kv(&self, key: &str, value: String, ttl: Duration) -> StateFuture<'_, ()> {
        let now = Instant::now();
        self.with(|i| {
            if i.kv.len() >= 4096 && !i.kv.contains_key(key) {
                i.kv.retain(|_, (_, exp)| *exp > now);
            }
            i.kv.insert(key.to_string(), (value, now + ttl));
        });
        Box::pin(async { Ok(()) })
    }

    fn get_kv(&self, key: &str) -> StateFuture<'_, Option<String>> {
        let now = Instant::now();
        let value = self.with(|i| {
            i.kv.get(key)
                .filter(|(_, exp)| *exp > now)
                .map(|(v, _)| v.clone())
        });
        Box::pin(async move { Ok(value) })
    }

    fn list_len(&self, _key: &str) -> StateFuture<'_, u64> {
        // No lists in process: `target.redis_list` is refused without state.backend: redis.
        Box::pin(async move {
            Err(StateError::Backend(
                "lists need state.backend: redis".into(),
            ))
        })
    }

    fn publish(&self, _channel: &str, _message: String) -> StateFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self, _channel: &str, _to: tokio::sync::mpsc::UnboundedSender<String>) {}

    fn status(&self) -> BackendStatus {
        BackendStatus {
            kind: "memory",
            connected: true,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn take_never_grants_past_the_limit() {
        let m = MemoryState::default();
        let ttl = Duration::from_secs(5);
        assert_eq!(m.take("k", 4, 10, ttl).await.ok(), Some(4));
        assert_eq!(m.take("k", 4, 10, ttl).await.ok(), Some(4));
        assert_eq!(m.take("k", 4, 10, ttl).await.ok(), Some(2));
        assert_eq!(m.take("k", 4, 10, ttl).await.ok(), Some(0));
        assert_eq!(m.take("other", 4, 10, ttl).await.ok(), Some(4));
    }

    #[tokio::test]
    async fn leases_fence_stale_holders() {
        let m = MemoryState::default();
        let ttl = Duration::from_secs(5);
        let a = m.lease("l", "a", ttl).await.ok();
        assert_eq!(
            a,
            Some(Lease {
                holder: "a".into(),
                token: 1
            })
        );
        // Renewal keeps the token; another node sees the holder.
        assert_eq!(m.lease("l", "a", ttl).await.ok(), a);
        assert_eq!(m.lease("l", "b", ttl).await.ok(), a);
        assert_eq!(m.put_fenced("l", 1, "x".into(), ttl).await.ok(), Some(true));
        // The lease lapses: b takes it with a newer token; a's writes are refused.
        m.lease("l", "a", Duration::ZERO).await.ok();
        let b = m.lease("l", "b", ttl).await.ok();
        assert_eq!(
            b,
            Some(Lease {
                holder: "b".into(),
                token: 2
            })
        );
        assert_eq!(
            m.put_fenced("l", 1, "stale".into(), ttl).await.ok(),
            Some(false)
        );
        assert_eq!(m.get_fenced("l").await.ok().flatten().as_deref(), Some("x"));
        assert_eq!(m.put_fenced("l", 2, "y".into(), ttl).await.ok(), Some(true));
        assert_eq!(m.get_fenced("l").await.ok().flatten().as_deref(), Some("y"));
    }

    #[tokio::test]
    async fn key_values_expire() {
        let m = MemoryState::default();
        m.put_kv("a", "1".into(), Duration::from_secs(5)).await.ok();
        m.put_kv("b", "2".into(), Duration::ZERO).await.ok();
        assert_eq!(m.get_kv("a").await.ok().flatten().as_deref(), Some("1"));
        assert_eq!(m.get_kv("b").await.ok().flatten(), None);
        assert_eq!(m.get_kv("c").await.ok().flatten(), None);
    }

    #[tokio::test]
    async fn members_expire() {
        let m = MemoryState::default();
        m.put_member("g", "a", "1".into(), Duration::from_secs(5))
            .await
            .ok();
        m.put_member("g", "b", "2".into(), Duration::ZERO)
            .await
            .ok();
        let list = m.members("g").await.unwrap_or_default();
        assert_eq!(list, vec![("a".to_string(), "1".to_string())]);
        m.remove_member("g", "a").await.ok();
        assert!(m.members("g").await.unwrap_or_default().is_empty());
    }
}
