//! The `memory` backend: shared state kept in this process (one node, no Redis).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BackendStatus, SharedState, StateFuture};

#[derive(Default)]
struct Inner {
    /// group -> id -> (value, expiry)
    members: HashMap<String, HashMap<String, (String, Instant)>>,
    /// key -> (used, expiry)
    counters: HashMap<String, (u64, Instant)>,
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
