//! Rate limits of pools (`rate_limit: {rate, burst, scope}`), checked once per request by
//! `check`, which never waits: it only touches a local bucket under a short lock.
//!
//! `scope: node`: a token bucket of `burst` tokens refilled at `rate`.
//!
//! `scope: cluster`: time is cut into aligned windows (1 s, or `1/rate` for slower rates);
//! the fleet may admit `limit = rate × window` requests per window. Each node leases tokens
//! of the current window from the shared state in batches (`limit / 50`, at least 1) on a
//! background task, ahead of need (at half a batch left, and the next window's first batch
//! shortly before it starts). A node out of tokens while its lease is in flight admits on
//! credit, at most one batch, repaid by the lease (never once the window is spent). The
//! shared counter never grants past `limit`, so while the backend answers the fleet admits
//! at most `limit + nodes × batch` per window (2% per node over, at most); it may admit less,
//! by at most one batch per node (leased, unused when the window ends). When the backend does not
//! answer, each node falls back to a local bucket of `rate / nodes` (the fleet size last
//! seen), and goes back to leasing as soon as it answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::fleet::Fleet;
use super::{bounded, now_ms, SharedState};
use crate::config::{RateLimit, RateLimitScope};
use crate::runtime::Snapshot;

/// Before a window starts, lease its first batch this long ahead.
const PREFETCH_MS: u64 = 200;
/// After a failed lease, run node-local this long before trying again.
const BACKOFF: Duration = Duration::from_secs(1);

/// The rate limiters of one autolb, created on first use per pool and config.
pub struct Limiters {
    backend: Arc<dyn SharedState>,
    fleet: Arc<Fleet>,
    handle: tokio::runtime::Handle,
    map: ArcSwap<HashMap<String, Arc<Limiter>>>,
    create: Mutex<()>,
}

impl Limiters {
    /// Creates the limiters of one autolb (must run in tokio); the server hands them to
    /// every connection (`ConnContext::shared`).
    pub fn start(backend: Arc<dyn SharedState>, fleet: Arc<Fleet>) -> Arc<Limiters> {
        Arc::new(Limiters {
            backend,
            fleet,
            handle: tokio::runtime::Handle::current(),
            map: ArcSwap::from_pointee(HashMap::new()),
            create: Mutex::new(()),
        })
    }

    /// Admit the request (`None`) or refuse it: `Some(retry_after)` in seconds, which the
    /// proxy answers with 429 and `Retry-After`. The one call of the request path.
    pub fn check(&self, snapshot: &Snapshot, pool: usize) -> Option<u64> {
        let pool_config = snapshot.config.pools.get(pool)?;
        let config = pool_config.rate_limit.as_ref()?;
        let limiter = self.get(&pool_config.name, config);
        let local = !self.backend.connected();
        limiter.admit(local, self.fleet.node_count())
    }

    /// The limiter of `pool` for `config`, made anew when the config changed (reload).
    pub fn get(&self, pool: &str, config: &RateLimit) -> Arc<Limiter> {
        if let Some(l) = self.map.load().get(pool) {
            if l.config == *config {
                return l.clone();
            }
        }
        let _guard = self.create.lock();
        if let Some(l) = self.map.load().get(pool) {
            if l.config == *config {
                return l.clone();
            }
        }
        let limiter = Arc::new(Limiter::new(pool, config.clone()));
        if limiter.config.scope == RateLimitScope::Cluster {
            self.handle
                .spawn(lease(Arc::downgrade(&limiter), self.backend.clone()));
        }
        let mut map = HashMap::clone(&self.map.load());
        map.insert(pool.to_string(), limiter.clone());
        self.map.store(Arc::new(map));
        limiter
    }

    /// Prometheus lines.
    pub fn metrics(&self) -> String {
        let map = self.map.load();
        let mut out = String::from(
            "# HELP autolb_rate_limited_total Requests refused with 429 by a pool's rate_limit.\n# TYPE autolb_rate_limited_total counter\n",
        );
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in &names {
            let l = &map[*name];
            out.push_str(&format!(
                "autolb_rate_limited_total{{pool=\"{name}\",scope=\"{}\"}} {}\n",
                l.scope_name(),
                l.rejected.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP autolb_rate_limit_node_local Whether a cluster rate limit runs node-local (1) because the shared state does not answer.\n# TYPE autolb_rate_limit_node_local gauge\n");
        for name in names {
            let l = &map[name];
            if l.config.scope == RateLimitScope::Cluster {
                let local = !self.backend.connected() || l.lock().failed_recently();
                out.push_str(&format!(
                    "autolb_rate_limit_node_local{{pool=\"{name}\"}} {}\n",
                    u8::from(local)
                ));
            }
        }
        out
    }
}

/// The cluster window geometry of a rate: (window length in ms, limit per window, batch).
pub fn window_of(rate: f64) -> (u64, u64, u64) {
    let window_ms = ((1000.0 / rate).ceil() as u64).max(1000);
    let limit = ((rate * window_ms as f64 / 1000.0).floor() as u64).max(1);
    (window_ms, limit, (limit / 50).max(1))
}

#[derive(Debug, Default)]
struct State {
    /// Local bucket (`scope: node`, and the cluster fallback).
    tokens: f64,
    last: Option<Instant>,
    /// Cluster: the current window, its leased tokens left (negative: on credit), whether it
    /// is spent fleet-wide.
    window: u64,
    leased: i64,
    exhausted: bool,
    demand: bool,
    /// Tokens already leased for `next_window`.
    next_window: u64,
    next_tokens: u64,
    failed_at: Option<Instant>,
}

impl State {
    fn failed_recently(&self) -> bool {
        self.failed_at.is_some_and(|t| t.elapsed() < BACKOFF)
    }

    /// Moves to window `w` (taking the prefetched tokens when they are for it).
    fn roll(&mut self, w: u64) {
        if self.window == w {
            return;
        }
        self.window = w;
        self.exhausted = false;
        self.demand = false;
        if self.next_window == w {
            self.leased = self.next_tokens as i64;
        } else {
            self.leased = 0;
        }
        self.next_tokens = 0;
    }

    /// Token bucket of `rate`/s holding at most `burst`.
    fn bucket(&mut self, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let elapsed = self.last.map_or(burst / rate.max(1e-9), |l| {
            now.duration_since(l).as_secs_f64()
        });
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One pool's limiter.
pub struct Limiter {
    config: RateLimit,
    pool: String,
    window_ms: u64,
    limit: u64,
    batch: u64,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

impl Limiter {
    fn new(pool: &str, config: RateLimit) -> Limiter {
        let (window_ms, limit, batch) = window_of(config.rate);
        Limiter {
            config,
            pool: pool.to_string(),
            window_ms,
            limit,
            batch,
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn scope_name(&self) -> &'static str {
        match self.config.scope {
            RateLimitScope::Node => "node",
            RateLimitScope::Cluster => "cluster",
        }
    }

    /// `None`: admitted; `Some(seconds)`: refused, retry after that long.
    pub fn admit(&self, backend_down: bool, nodes: usize) -> Option<u64> {
        let rate = self.config.rate;
        let burst = f64::from(self.config.burst);
        let mut s = self.lock();
        let ok = match self.config.scope {
            RateLimitScope::Node => s.bucket(rate, burst),
            RateLimitScope::Cluster if backend_down || s.failed_recently() => {
                let n = nodes.max(1) as f64;
                s.bucket(rate / n, (burst / n).max(1.0))
            }
            RateLimitScope::Cluster => {
                s.roll(now_ms() / self.window_ms);
                s.demand = true;
                let credit = if s.exhausted { 0 } else { self.batch as i64 };
                let ok = s.leased > -credit;
                if ok {
                    s.leased -= 1;
                }
                if s.leased * 2 <= self.batch as i64 && !s.exhausted {
                    self.wake.notify_one();
                }
                ok
            }
        };
        drop(s);
        if ok {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            Some(
                (self.window_ms / 1000)
                    .max((1.0 / rate).ceil() as u64)
                    .max(1),
            )
        }
    }
}

/// Leases tokens of a cluster limiter ahead of need; ends when the limiter is replaced.
async fn lease(limiter: Weak<Limiter>, backend: Arc<dyn SharedState>) {
    loop {
        let Some(l) = limiter.upgrade() else { return };
        let _ = tokio::time::timeout(Duration::from_millis(50), l.wake.notified()).await;
        if !backend.connected() {
            continue;
        }
        let now = now_ms();
        let window = now / l.window_ms;
        let (need_current, need_next) = {
            let mut s = l.lock();
            if s.failed_recently() {
                continue;
            }
            s.roll(window);
            let ends_in = (window + 1) * l.window_ms - now;
            (
                s.leased * 2 <= l.batch as i64 && !s.exhausted,
                s.demand && ends_in <= PREFETCH_MS && s.next_window != window + 1,
            )
        };
        if need_current {
            take(&l, &*backend, window, false).await;
        }
        if need_next {
            take(&l, &*backend, window + 1, true).await;
        }
    }
}

async fn take(l: &Limiter, backend: &dyn SharedState, window: u64, next: bool) {
    let key = format!("rl:{}:{window}", l.pool);
    let ttl = Duration::from_millis(l.window_ms * 3);
    match bounded(backend.take(&key, l.batch, l.limit, ttl)).await {
        Ok(granted) => {
            let mut s = l.lock();
            if next {
                s.next_window = window;
                s.next_tokens = granted;
            } else if s.window == window {
                s.leased += granted as i64;
                s.exhausted = granted < l.batch;
            }
        }
        Err(e) => {
            tracing::debug!(pool = %l.pool, error = %e, "rate limit lease failed: node-local");
            l.lock().failed_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fit_the_rate() {
        assert_eq!(window_of(100.0), (1000, 100, 2));
        assert_eq!(window_of(1000.0), (1000, 1000, 20));
        assert_eq!(window_of(10.0), (1000, 10, 1));
        assert_eq!(window_of(0.5), (2000, 1, 1));
    }

    #[test]
    fn node_bucket_holds_its_burst() {
        let mut s = State::default();
        let admitted = (0..50).filter(|_| s.bucket(1.0, 10.0)).count();
        assert_eq!(admitted, 10);
    }
}
