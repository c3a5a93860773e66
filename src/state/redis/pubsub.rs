//! Redis pub/sub for the shared features: `PUBLISH` over the data connection, and one
//! subscriber connection per channel (RESP3 pushes) kept to the node autolb talks to — the
//! master outside a cluster (it follows failovers: a new master, a new subscription), any
//! serving node of a Redis Cluster (a cluster forwards every `PUBLISH` to every node).
//! A message published while a subscription is down is lost: callers that cannot lose one
//! keep a slower fallback (the cache purges poll their group).

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::{PushKind, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::link::{self, Addr};
use super::{Mode, RedisState};

/// How long a lost subscription waits before subscribing again, and how often a quiet one
/// checks that its node still answers (and is still the one to listen to).
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl RedisState {
    /// The node to subscribe on: the one the data connection goes to, or in a cluster the
    /// first serving master known (the seeds before the first topology).
    fn subscribe_target(&self) -> Option<Addr> {
        if self.mode() != Mode::Cluster {
            if let Some(a) = self.talking_to.lock().ok().and_then(|t| t.clone()) {
                return Some(a);
            }
        }
        let topo = self.topology();
        topo.nodes
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .find_map(|n| Addr::parse(&n.addr))
            .or_else(|| self.access.seeds.first().cloned())
    }

    fn set_listening(&self, channel: &str, on: bool) {
        if let Ok(mut l) = self.listening.lock() {
            l.retain(|c| c != channel);
            if on {
                l.push(channel.to_string());
            }
        }
    }

    /// Channels with a live subscription (for status).
    pub(super) fn listening(&self) -> Vec<String> {
        self.listening.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Delivers every message published on `channel` to `to`, for as long as the backend lives
/// and `to` has a receiver; subscribes again after a lost connection or a failover.
pub(super) async fn listen(state: Weak<RedisState>, channel: String, to: UnboundedSender<String>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        if to.is_closed() {
            return;
        }
        let target = if s.is_connected() {
            s.subscribe_target()
        } else {
            None
        };
        let Some(addr) = target else {
            drop(s);
            tokio::time::sleep(CHECK_EVERY).await;
            continue;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let subscribed = match s.access.subscriber(&addr, tx).await {
            Ok(c) => link::subscribe(c, &channel).await,
            Err(e) => Err(e),
        };
        let mut conn = match subscribed {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%addr, %channel, error = %e, "redis: cannot subscribe");
                drop(s);
                tokio::time::sleep(CHECK_EVERY).await;
                continue;
            }
        };
        s.set_listening(&channel, true);
        tracing::debug!(%addr, %channel, "redis: subscribed");
        drop(s);
        loop {
            let push = tokio::select! {
                p = rx.recv() => p,
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    let Some(s) = state.upgrade() else { return };
                    if to.is_closed() || s.subscribe_target().as_ref() != Some(&addr) {
                        break;
                    }
                    drop(s);
                    // A subscription that went silent because its node is gone.
                    if !link::answers_ping(&mut conn).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(push) = push else { break };
            match push.kind {
                PushKind::Message => {
                    if let Some(message) = push.data.get(1).and_then(text) {
                        if to.send(message).is_err() {
                            return;
                        }
                    }
                }
                PushKind::Disconnection => break,
                _ => {}
            }
        }
        drop(conn);
        if let Some(s) = state.upgrade() {
            s.set_listening(&channel, false);
        }
        tokio::time::sleep(CHECK_EVERY / 4).await;
    }
}

/// Starts the subscription of `channel` on `state`.
pub(super) fn spawn(state: &Arc<RedisState>, channel: &str, to: UnboundedSender<String>) {
    tokio::spawn(listen(Arc::downgrade(state), channel.to_string(), to));
}
