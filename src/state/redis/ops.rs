//! The shared-state primitives on Redis: keys, and the Lua scripts that make the rate-limit
//! counter, the lease and the fenced write atomic (each script's keys share a hash slot, so
//! they run on Redis Cluster too).

use std::time::Duration;

use super::RedisState;
use crate::state::{BackendStatus, Lease, SharedState, StateFuture};

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

/// Keys of one group share a hash slot (`{...}`), so MGET works on Redis Cluster too.
fn ids_key(group: &str) -> String {
    format!("{{autolb:{group}}}:ids")
}

fn member_key(group: &str, id: &str) -> String {
    format!("{{autolb:{group}}}:m:{id}")
}

impl SharedState for RedisState {
    fn kind(&self) -> &'static str {
        self.mode().kind()
    }

    fn connected(&self) -> bool {
        self.is_connected()
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

    fn list_len(&self, key: &str) -> StateFuture<'_, u64> {
        let key = key.to_string();
        Box::pin(async move {
            let mut llen = ::redis::cmd("LLEN");
            llen.arg(&key);
            self.query(llen).await
        })
    }

    fn publish(&self, channel: &str, message: String) -> StateFuture<'_, ()> {
        let channel = channel.to_string();
        Box::pin(async move {
            let mut publish = ::redis::cmd("PUBLISH");
            publish.arg(&channel).arg(message);
            let _: i64 = self.query(publish).await?;
            Ok(())
        })
    }

    fn subscribe(&self, channel: &str, to: tokio::sync::mpsc::UnboundedSender<String>) {
        if let Some(me) = self.me.upgrade() {
            super::pubsub::spawn(&me, channel, to);
        }
    }

    fn status(&self) -> BackendStatus {
        self.backend_status()
    }
}
