//! Per-client-IP rate limits (`rate_limit: {per_ip, burst}` on a listener or route): a
//! token bucket per IP in sharded maps, carried over a reload while its settings stay the
//! same. `proxy::validate` answers 429 from it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::IpRateLimit;

/// Buckets kept per listener; past this many client IPs, idle ones are dropped.
const MAX_TRACKED_IPS: usize = 100_000;
const SHARDS: usize = 32;

/// A token bucket per client IP (one per listener or route and rate-limit setting).
#[derive(Debug)]
pub struct IpLimiter {
    config: IpRateLimit,
    shards: Vec<Mutex<HashMap<IpAddr, (f64, Instant)>>>,
}

impl IpLimiter {
    pub fn new(config: IpRateLimit) -> IpLimiter {
        IpLimiter {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// `previous` (the same listener's or route's limiter in the snapshot before a reload)
    /// when it has this `config`, else a new limiter with fresh buckets.
    pub fn carried(previous: Option<&Arc<IpLimiter>>, config: &IpRateLimit) -> Arc<IpLimiter> {
        match previous {
            Some(limiter) if limiter.config == *config => limiter.clone(),
            _ => Arc::new(IpLimiter::new(config.clone())),
        }
    }

    /// Take a token for `ip`, or the whole seconds until one is available.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let shard = &self.shards[shard_of(ip)];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (rate, burst) = (self.config.per_ip, f64::from(self.config.burst));
        if map.len() >= MAX_TRACKED_IPS / SHARDS && !map.contains_key(&ip) {
            // Full buckets carry no information: forget them.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / rate).ceil() as u64).max(1))
        }
    }
}

fn shard_of(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n as u64) ^ ((n >> 64) as u64)
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_report_the_wait() {
        let l = IpLimiter::new(IpRateLimit {
            per_ip: 2.0,
            burst: 2,
        });
        let (ip, t0) = ("10.0.0.1".parse().expect("ip"), Instant::now());
        assert!(l.admit(ip, t0).is_ok() && l.admit(ip, t0).is_ok());
        assert_eq!(l.admit(ip, t0), Err(1));
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(l.admit(other, t0).is_ok());
        assert!(l
            .admit(ip, t0 + std::time::Duration::from_millis(600))
            .is_ok());
    }
}
