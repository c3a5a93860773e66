//! The `redis` backend: standalone Redis or Redis Cluster (detected at connect time from
//! `INFO cluster`), through the async `redis` crate on tokio.
//!
//! A supervisor task connects, PINGs once a second (round trip, cluster nodes) and
//! reconnects after any failure. Every call is bounded by `CALL_TIMEOUT`; while there is no
//! connection, calls fail at once, so callers fall back to node-local behaviour.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::{aio::MultiplexedConnection, cluster_async::ClusterConnection, Cmd, FromRedisValue};
use serde_json::{json, Value};

use super::{bounded, BackendStatus, Lease, SharedState, StateError, StateFuture};

/// One connection, cloned per call (both kinds multiplex).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, StateError> {
        let r = match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        };
        r.map_err(|e| StateError::Backend(e.to_string()))
    }
}

/// Takes up to ARGV[1] from the counter KEYS[1] allowing ARGV[2] in total; ARGV[3]: TTL ms.
const TAKE: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return grant
";

/// Lease: KEYS[1] holder (SET NX PX), KEYS[2] fencing counter (INCR, never expires);
/// ARGV[1] holder, ARGV[2] TTL ms. Returns {holder, token}.
const LEASE: &str = r"
local h = redis.call('GET', KEYS[1])
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  local t = redis.call('INCR', KEYS[2])
  return {ARGV[1], t}
end
if h == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {h, tonumber(redis.call('GET', KEYS[2]) or '0')}
";

/// Fenced write: KEYS[1] fencing counter, KEYS[2] value; ARGV[1] token, ARGV[2] value,
/// ARGV[3] TTL ms. Refused (0) unless the token is the newest.
const PUT_FENCED: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

/// The keys of one lease share a hash slot (`{...}`), for Redis Cluster.
fn lease_key(name: &str, part: &str) -> String {
    format!("{{autolb:lease:{name}}}:{part}")
}

/// How long a connection attempt may take (in the supervisor, never on a request).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

struct LastError {
    message: String,
    at: Instant,
}

/// Shared state on Redis.
pub struct RedisState {
    url: String,
    conn: Mutex<Option<Conn>>,
    cluster: AtomicBool,
    connected: AtomicBool,
    rtt_us: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    nodes: Mutex<Vec<Value>>,
}

impl RedisState {
    /// Creates the backend and starts its supervisor (which ends when the backend is dropped).
    pub fn start(url: &str) -> Arc<RedisState> {
        let state = Arc::new(RedisState {
            url: url.to_string(),
            conn: Mutex::new(None),
            cluster: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            nodes: Mutex::new(Vec::new()),
        });
        tokio::spawn(supervise(Arc::downgrade(&state)));
        state
    }

    fn conn(&self) -> Option<Conn> {
        self.conn.lock().ok().and_then(|c| c.clone())
    }

    fn set_conn(&self, conn: Option<Conn>) {
        self.connected.store(conn.is_some(), Ordering::Relaxed);
        if let Ok(mut c) = self.conn.lock() {
            *c = conn;
        }
    }

    fn fail(&self, e: &StateError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(LastError {
                message: e.to_string(),
                at: Instant::now(),
            });
        }
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis: lost; shared features run node-local until it answers");
            self.set_conn(None);
        }
    }

    /// One bounded command; a failure drops the connection (the supervisor reconnects).
    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StateError> {
        let Some(mut conn) = self.conn() else {
            return Err(StateError::Disconnected);
        };
        let r = bounded(async move { conn.query(&cmd).await }).await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    async fn connect(&self) -> Result<Conn, StateError> {
        let client = ::redis::Client::open(self.url.as_str())
            .map_err(|e| StateError::Backend(e.to_string()))?;
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(super::CALL_TIMEOUT));
        let mut single = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| StateError::Timeout(CONNECT_TIMEOUT * 2))?
        .map_err(|e| StateError::Backend(e.to_string()))?;
        let info: String = bounded(async {
            ::redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut single)
                .await
                .map_err(|e| StateError::Backend(e.to_string()))
        })
        .await?;
        if !info.contains("cluster_enabled:1") {
            self.cluster.store(false, Ordering::Relaxed);
            return Ok(Conn::Single(single));
        }
        let cluster = ::redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(super::CALL_TIMEOUT)
            .retries(1)
            .build()
            .map_err(|e| StateError::Backend(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 4, cluster.get_async_connection())
            .await
            .map_err(|_| StateError::Timeout(CONNECT_TIMEOUT * 4))?
            .map_err(|e| StateError::Backend(e.to_string()))?;
        self.cluster.store(true, Ordering::Relaxed);
        Ok(Conn::Cluster(conn))
    }

    /// PING (round trip) and the node list.
    async fn probe(&self) -> Result<(), StateError> {
        let t = Instant::now();
        let _: String = self.query(::redis::cmd("PING")).await?;
        self.rtt_us
            .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        let nodes = if self.cluster.load(Ordering::Relaxed) {
            let text: String = self
                .query(::redis::cmd("CLUSTER").arg("NODES").clone())
                .await?;
            parse_cluster_nodes(&text)
        } else {
            vec![json!({ "address": redact(&self.url), "role": "master" })]
        };
        if let Ok(mut n) = self.nodes.lock() {
            *n = nodes;
        }
        Ok(())
    }
}

async fn supervise(state: Weak<RedisState>) {
    let mut was_connected = false;
    loop {
        let Some(s) = state.upgrade() else { return };
        if s.conn().is_none() {
            match s.connect().await {
                Ok(conn) => {
                    s.set_conn(Some(conn));
                    if s.probe().await.is_ok() {
                        if was_connected {
                            s.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        was_connected = true;
                        tracing::info!(
                            url = %redact(&s.url),
                            cluster = s.cluster.load(Ordering::Relaxed),
                            "redis: connected"
                        );
                    }
                }
                Err(e) => s.fail(&e),
            }
        } else {
            let _ = s.probe().await;
        }
        drop(s);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `redis://user:secret@host` -> `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// `CLUSTER NODES` lines -> `{id, address, role, link, slots}`.
fn parse_cluster_nodes(text: &str) -> Vec<Value> {
    let mut nodes: Vec<Value> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let address = f[1].split('@').next().unwrap_or(f[1]);
            let role = if f[2].contains("master") {
                "master"
            } else {
                "replica"
            };
            Some(json!({
                "id": f[0].get(..8).unwrap_or(f[0]),
                "address": address,
                "role": role,
                "myself": f[2].contains("myself"),
                "failed": f[2].contains("fail"),
                "link": f[7],
                "slots": f[8..].join(" "),
            }))
        })
        .collect();
    nodes.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
    nodes
}

/// Keys of one group share a hash slot (`{...}`), so MGET works on Redis Cluster too.
fn ids_key(group: &str) -> String {
    format!("{{autolb:{group}}}:ids")
}

fn member_key(group: &str, id: &str) -> String {
    format!("{{autolb:{group}}}:m:{id}")
}

impl SharedState for RedisState {
    fn kind(&self) -> &'static str {
        if self.cluster.load(Ordering::Relaxed) {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn put_member(
        &self,
        group: &str,
        id: &str,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, ()> {
        let (ids, key, id) = (ids_key(group), member_key(group, id), id.to_string());
        Box::pin(async move {
            let mut set = ::redis::cmd("SET");
            set.arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis() as u64);
            let _: () = self.query(set).await?;
            let mut add = ::redis::cmd("SADD");
            add.arg(&ids).arg(&id);
            let _: () = self.query(add).await?;
            Ok(())
        })
    }

    fn members(&self, group: &str) -> StateFuture<'_, Vec<(String, String)>> {
        let group = group.to_string();
        Box::pin(async move {
            let ids_key = ids_key(&group);
            let mut smembers = ::redis::cmd("SMEMBERS");
            smembers.arg(&ids_key);
            let ids: Vec<String> = self.query(smembers).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut mget = ::redis::cmd("MGET");
            for id in &ids {
                mget.arg(member_key(&group, id));
            }
            let values: Vec<Option<String>> = self.query(mget).await?;
            let mut live = Vec::new();
            let mut gone = Vec::new();
            for (id, v) in ids.into_iter().zip(values) {
                match v {
                    Some(v) => live.push((id, v)),
                    None => gone.push(id),
                }
            }
            if !gone.is_empty() {
                let mut srem = ::redis::cmd("SREM");
                srem.arg(&ids_key).arg(gone);
                let _: Result<(), _> = self.query(srem).await;
            }
            Ok(live)
        })
    }

    fn remove_member(&self, group: &str, id: &str) -> StateFuture<'_, ()> {
        let (ids, key, id) = (ids_key(group), member_key(group, id), id.to_string());
        Box::pin(async move {
            let mut del = ::redis::cmd("DEL");
            del.arg(&key);
            let _: () = self.query(del).await?;
            let mut srem = ::redis::cmd("SREM");
            srem.arg(&ids).arg(&id);
            let _: () = self.query(srem).await?;
            Ok(())
        })
    }

    fn take(&self, key: &str, want: u64, limit: u64, ttl: Duration) -> StateFuture<'_, u64> {
        let key = format!("autolb:{key}");
        Box::pin(async move {
            let mut eval = ::redis::cmd("EVAL");
            eval.arg(TAKE)
                .arg(1)
                .arg(&key)
                .arg(want)
                .arg(limit)
                .arg(ttl.as_millis().max(1) as u64);
            let granted: i64 = self.query(eval).await?;
            Ok(granted.max(0) as u64)
        })
    }

    fn lease(&self, name: &str, holder: &str, ttl: Duration) -> StateFuture<'_, Lease> {
        let (h, t, holder) = (
            lease_key(name, "holder"),
            lease_key(name, "token"),
            holder.to_string(),
        );
        Box::pin(async move {
            let mut eval = ::redis::cmd("EVAL");
            eval.arg(LEASE)
                .arg(2)
                .arg(&h)
                .arg(&t)
                .arg(&holder)
                .arg(ttl.as_millis().max(1) as u64);
            let (holder, token): (String, i64) = self.query(eval).await?;
            Ok(Lease {
                holder,
                token: token.max(0) as u64,
            })
        })
    }

    fn put_fenced(
        &self,
        name: &str,
        token: u64,
        value: String,
        ttl: Duration,
    ) -> StateFuture<'_, bool> {
        let (t, v) = (lease_key(name, "token"), lease_key(name, "value"));
        Box::pin(async move {
            let mut eval = ::redis::cmd("EVAL");
            eval.arg(PUT_FENCED)
                .arg(2)
                .arg(&t)
                .arg(&v)
                .arg(token)
                .arg(value)
                .arg(ttl.as_millis().max(1) as u64);
            let stored: i64 = self.query(eval).await?;
            Ok(stored == 1)
        })
    }

    fn get_fenced(&self, name: &str) -> StateFuture<'_, Option<String>> {
        let v = lease_key(name, "value");
        Box::pin(async move {
            let mut get = ::redis::cmd("GET");
            get.arg(&v);
            self.query(get).await
        })
    }

    fn put_kv(&self, key: &str, value: String, ttl: Duration) -> StateFuture<'_, ()> {
        let key = format!("autolb:kv:{key}");
        Box::pin(async move {
            let mut set = ::redis::cmd("SET");
            set.arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            self.query(set).await
        })
    }

    fn get_kv(&self, key: &str) -> StateFuture<'_, Option<String>> {
        let key = format!("autolb:kv:{key}");
        Box::pin(async move {
            let mut get = ::redis::cmd("GET");
            get.arg(&key);
            self.query(get).await
        })
    }

    fn status(&self) -> BackendStatus {
        let connected = self.connected();
        let (last_error, last_error_age) = self
            .last_error
            .lock()
            .ok()
            .and_then(|l| {
                l.as_ref()
                    .map(|e| (Some(e.message.clone()), Some(e.at.elapsed().as_secs())))
            })
            .unwrap_or((None, None));
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        BackendStatus {
            kind: self.kind(),
            connected,
            url: Some(redact(&self.url)),
            round_trip: (connected && rtt > 0).then(|| Duration::from_micros(rtt)),
            nodes: self.nodes.lock().map(|n| n.clone()).unwrap_or_default(),
            last_error,
            last_error_age,
            errors_total: self.errors.load(Ordering::Relaxed),
            reconnects_total: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact("redis://u:pw@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn cluster_nodes_parse() {
        let text = "07c37dfeb2352 127.0.0.1:30004@31004,host replica e7d1eec 0 1426238317239 4 connected\n\
                    67ed2db8d677 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0]["address"], "127.0.0.1:30002");
        assert_eq!(nodes[0]["role"], "master");
        assert_eq!(nodes[0]["slots"], "5461-10922");
        assert_eq!(nodes[1]["role"], "replica");
    }
}
