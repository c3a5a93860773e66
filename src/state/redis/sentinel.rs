//! Sentinel: the master's address from the Sentinels (`SENTINEL get-master-addr-by-name`,
//! each Sentinel in turn), and one `+switch-master` subscription per Sentinel that makes the
//! supervisor follow a failover at once instead of at the next lost call.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use ::redis::{PushKind, Value};

use super::link::{self, Addr};
use super::RedisState;
use crate::state::{bounded, StateError};

/// How long a subscription waits before connecting again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

impl RedisState {
    /// Asks every Sentinel in turn (those that answered last time first) where the master is.
    pub(super) async fn resolve_master(
        &self,
        s: &crate::config::Sentinel,
    ) -> Result<Addr, StateError> {
        let mut order: Vec<String> = self
            .sentinels
            .lock()
            .map(|l| {
                l.iter()
                    .map(|x| (x.answered != Some(true), x.addr.clone()))
                    .collect::<Vec<_>>()
            })
            .map(|mut v| {
                v.sort_by_key(|(missed, _)| *missed);
                v.into_iter().map(|(_, a)| a).collect()
            })
            .unwrap_or_else(|_| s.sentinels.clone());
        order.dedup();
        let mut last = StateError::Backend("no Sentinel configured".into());
        for text in order {
            let r = self.ask_sentinel(&text, &s.master_name).await;
            if let Ok(mut l) = self.sentinels.lock() {
                if let Some(x) = l.iter_mut().find(|x| x.addr == text) {
                    x.answered = Some(r.is_ok());
                }
            }
            match r {
                Ok(a) => return Ok(a),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn ask_sentinel(&self, sentinel: &str, name: &str) -> Result<Addr, StateError> {
        let addr = Addr::parse(sentinel)
            .ok_or_else(|| StateError::Backend(format!("invalid sentinel {sentinel}")))?;
        let mut c = self.access.sentinel(&addr, None).await?;
        let mut cmd = ::redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(name);
        let reply: Option<(String, u16)> = bounded(async {
            cmd.query_async(&mut c)
                .await
                .map_err(|e| StateError::Backend(e.to_string()))
        })
        .await?;
        let (host, port) = reply.ok_or_else(|| {
            StateError::Backend(format!("Sentinel {sentinel} knows no master named {name}"))
        })?;
        Ok(Addr { host, port })
    }

    /// A `+switch-master` for our master: leave the old one now; the supervisor re-resolves.
    fn switched(&self, payload: &str) {
        let Some(name) = self.sentinel.as_ref().map(|s| s.master_name.as_str()) else {
            return;
        };
        let Some(to) = switch_target(payload, name) else {
            return;
        };
        let current = self
            .talking_to
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .map(|a| a.to_string());
        if current.as_deref() == Some(to.as_str()) {
            return;
        }
        tracing::info!(master = name, %to, "redis: Sentinel announced a new master (+switch-master)");
        self.switch_seen.store(true, Ordering::Relaxed);
        self.down(&StateError::Backend(format!(
            "+switch-master: the master of {name} is now {to}"
        )));
        self.wake.notify_one();
    }

    fn set_subscribed(&self, sentinel: &str, on: bool) {
        if let Ok(mut l) = self.sentinels.lock() {
            if let Some(x) = l.iter_mut().find(|x| x.addr == sentinel) {
                x.subscribed = on;
            }
        }
    }
}

/// The new master of a `+switch-master` payload (`NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`)
/// when it is about `name`.
fn switch_target(payload: &str, name: &str) -> Option<String> {
    let f: Vec<&str> = payload.split_whitespace().collect();
    (f.len() == 5 && f[0] == name)
        .then(|| Addr::parse(&format!("{}:{}", f[3], f[4])))
        .flatten()
        .map(|a| a.to_string())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Subscribes to `+switch-master` on one Sentinel for as long as the backend lives.
pub(super) async fn listen(state: Weak<RedisState>, sentinel: String) {
    let Some(addr) = Addr::parse(&sentinel) else {
        return;
    };
    loop {
        let Some(s) = state.upgrade() else { return };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let subscribed = match s.access.sentinel(&addr, Some(tx)).await {
            Ok(c) => link::subscribe(c, "+switch-master").await,
            Err(e) => Err(e),
        };
        let mut conn = match subscribed {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(sentinel = %sentinel, error = %e, "cannot subscribe to +switch-master");
                drop(s);
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        s.set_subscribed(&sentinel, true);
        drop(s);
        loop {
            let push = tokio::select! {
                p = rx.recv() => p,
                _ = tokio::time::sleep(RESUBSCRIBE) => {
                    if state.strong_count() == 0 {
                        return;
                    }
                    // A subscription that went silent because its Sentinel is gone.
                    if !link::answers_ping(&mut conn).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(push) = push else { break };
            let Some(s) = state.upgrade() else { return };
            match push.kind {
                PushKind::Message => {
                    if let Some(payload) = push.data.get(1).and_then(text) {
                        s.switched(&payload);
                    }
                }
                PushKind::Disconnection => break,
                _ => {}
            }
        }
        drop(conn);
        if let Some(s) = state.upgrade() {
            s.set_subscribed(&sentinel, false);
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::switch_target;

    #[test]
    fn switch_master_payloads() {
        let p = "autolb 127.0.0.1 6379 127.0.0.1 6380";
        assert_eq!(
            switch_target(p, "autolb").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(switch_target(p, "other"), None);
        assert_eq!(switch_target("autolb 127.0.0.1 6379", "autolb"), None);
        assert_eq!(
            switch_target("autolb a 1 ::1 6380", "autolb").as_deref(),
            Some("[::1]:6380")
        );
    }
}
