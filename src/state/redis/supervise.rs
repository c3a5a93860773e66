//! The supervisor of the Redis backend: connects (through every seed and every node of the
//! last known topology, or through Sentinel), probes once a second, follows failovers, and
//! decides when the shared features are `shared` (every master answers) or `node-local`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use ::redis::{aio::MultiplexedConnection, Cmd, FromRedisValue, Value};
use tokio::sync::Notify;

use super::link::Addr;
use super::topology::Topology;
use super::{Conn, Mode, RedisState};
use crate::state::{bounded, StateError};

/// How often a connected backend is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often a lost backend is retried.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// The least time between two rounds (a burst of failed calls wakes the supervisor once).
const MIN_GAP: Duration = Duration::from_millis(50);

pub(super) async fn run(state: Weak<RedisState>, wake: Arc<Notify>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        s.round().await;
        let pause = if s.is_connected() {
            PROBE_EVERY
        } else {
            RETRY_EVERY
        };
        drop(s);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => tokio::time::sleep(MIN_GAP).await,
        }
    }
}

/// What a cluster probe concluded.
enum Verdict {
    /// Every master answers.
    Up,
    /// The cluster is fine but this connection's view is not (a failover it has not
    /// caught up with): connect again through every node.
    Rebuild,
    /// The cluster does not serve every slot (yet).
    Down,
    /// The probe itself failed.
    Failed(StateError),
}

async fn route<T: FromRedisValue>(
    conn: &mut ClusterConnection,
    cmd: Cmd,
    routing: RoutingInfo,
) -> Result<T, StateError> {
    bounded(async {
        let v = conn
            .route_command(cmd, routing)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))?;
        T::from_redis_value(v).map_err(|e| StateError::Backend(e.to_string()))
    })
    .await
}

async fn single<T: FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: Cmd,
) -> Result<T, StateError> {
    bounded(async {
        cmd.query_async(conn)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))
    })
    .await
}

fn is_master(role: &Value) -> bool {
    match role {
        Value::Array(parts) => {
            matches!(
                parts.first(),
                Some(Value::BulkString(b)) if b == b"master"
            ) || matches!(parts.first(), Some(Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    }
}

const RANDOM: RoutingInfo = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);

impl RedisState {
    async fn round(&self) {
        match self.conn() {
            None => {
                let r = match self.sentinel.clone() {
                    Some(s) => self.connect_sentinel(&s).await,
                    None => self.connect_seeds().await,
                };
                if let Err(e) = r {
                    self.note_error(&e);
                }
            }
            Some(Conn::Single(c)) => self.probe_single(c).await,
            Some(Conn::Cluster(c)) => {
                let verdict = self.probe_cluster(c, false).await;
                if let Err(e) = self.settle(verdict).await {
                    self.note_error(&e);
                }
            }
        }
    }

    /// Seeds first, then every node of the last known topology.
    fn candidates(&self) -> Vec<Addr> {
        let mut all = self.access.seeds.clone();
        for a in self.topology().addrs() {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        all
    }

    /// Standalone or Redis Cluster through the seeds (and the nodes known from before).
    async fn connect_seeds(&self) -> Result<(), StateError> {
        let candidates = self.candidates();
        if self.mode() == Mode::Cluster {
            return self.connect_cluster(&candidates).await;
        }
        let mut last = StateError::Disconnected;
        for addr in &candidates {
            let mut c = match self.access.connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut info = ::redis::cmd("INFO");
            info.arg("cluster");
            let info: String = match single(&mut c, info).await {
                Ok(i) => i,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            if info.contains("cluster_enabled:1") {
                self.set_mode(Mode::Cluster);
                return self.connect_cluster(&candidates).await;
            }
            match self
                .install_single(addr, c, "another seed answered as master")
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The master Sentinel names (asking each Sentinel in turn), if it is one.
    async fn connect_sentinel(&self, s: &crate::config::Sentinel) -> Result<(), StateError> {
        let master = self.resolve_master(s).await?;
        let c = self.access.connect(&master).await?;
        let how = if self.switch_seen.swap(false, Ordering::Relaxed) {
            "sentinel +switch-master"
        } else {
            "sentinel (master re-resolved after it was lost)"
        };
        self.install_single(&master, c, how).await
    }

    /// `ROLE` must say master; then the connection is used (a new master is a failover).
    async fn install_single(
        &self,
        addr: &Addr,
        mut c: MultiplexedConnection,
        how: &'static str,
    ) -> Result<(), StateError> {
        let t = Instant::now();
        let role: Value = single(&mut c, ::redis::cmd("ROLE")).await?;
        if !is_master(&role) {
            return Err(StateError::Backend(format!(
                "{addr} is not a master (ROLE)"
            )));
        }
        self.rtt_us
            .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        let topo = Topology::from_role(addr, &role);
        let before = self.topology();
        let old = before
            .nodes
            .iter()
            .find(|n| n.master)
            .map(|n| n.addr.clone());
        if let Some(old) = old.filter(|o| *o != addr.to_string()) {
            self.followed(old, addr.to_string(), how);
        }
        if let Ok(mut t) = self.topology.lock() {
            *t = topo;
        }
        if let Ok(mut t) = self.talking_to.lock() {
            *t = Some(addr.clone());
        }
        self.set_conn(Some(Conn::Single(c)));
        self.up();
        Ok(())
    }

    /// PING (round trip) and ROLE: a master that became a replica is left for the new one.
    async fn probe_single(&self, mut c: MultiplexedConnection) {
        let t = Instant::now();
        let role: Result<Value, _> = single(&mut c, ::redis::cmd("ROLE")).await;
        match role {
            Ok(role) if is_master(&role) => {
                self.rtt_us
                    .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                let addr = self.talking_to.lock().ok().and_then(|a| a.clone());
                if let (Some(addr), Ok(mut topo)) = (addr, self.topology.lock()) {
                    *topo = Topology::from_role(&addr, &role);
                }
                self.up();
            }
            Ok(_) => self.fail(&StateError::Backend(
                "the master became a replica (failover): re-resolving".into(),
            )),
            Err(e) => self.fail(&e),
        }
    }

    /// A new cluster connection through `candidates`, probed before use.
    async fn connect_cluster(&self, candidates: &[Addr]) -> Result<(), StateError> {
        let c = self.access.cluster(candidates).await?;
        self.set_conn(Some(Conn::Cluster(c.clone())));
        // A failed probe was noted already; a connection that cannot even be probed is
        // dropped (the next round connects again).
        if let Verdict::Failed(_) = self.probe_cluster(c, true).await {
            self.set_conn(None);
        }
        Ok(())
    }

    async fn settle(&self, verdict: Verdict) -> Result<(), StateError> {
        match verdict {
            Verdict::Up | Verdict::Down => Ok(()),
            Verdict::Rebuild => self.connect_cluster(&self.candidates()).await,
            Verdict::Failed(e) => {
                // The connection itself is gone: next round reconnects from scratch.
                self.set_conn(None);
                Err(e)
            }
        }
    }

    /// CLUSTER NODES (topology, failovers), CLUSTER INFO (state), then PING on every master
    /// of this connection's slot map: `shared` only when all of them answer.
    async fn probe_cluster(&self, mut c: ClusterConnection, fresh: bool) -> Verdict {
        let text: String = match route(&mut c, cluster_cmd("NODES"), RANDOM).await {
            Ok(t) => t,
            Err(e) => return self.probe_failed(e),
        };
        let topo = Topology::from_cluster_nodes(&text);
        let before = self.topology();
        let promotions = topo.promotions(&before);
        for p in &promotions {
            self.followed(
                p.from.clone(),
                p.to.clone(),
                "cluster failover (replica promoted)",
            );
        }
        let healthy = topo.healthy();
        if let Ok(mut t) = self.topology.lock() {
            *t = topo;
        }
        let info: String = match route(&mut c, cluster_cmd("INFO"), RANDOM).await {
            Ok(t) => t,
            Err(e) => return self.probe_failed(e),
        };
        if !(healthy && info.contains("cluster_state:ok")) {
            let e = StateError::Backend("cluster state is not ok (a master is down)".into());
            self.note_error(&e);
            self.down(&e);
            return Verdict::Down;
        }
        if !promotions.is_empty() && !fresh {
            return Verdict::Rebuild;
        }
        let t = Instant::now();
        let all = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        match route::<Value>(&mut c, ::redis::cmd("PING"), all).await {
            Ok(_) => {
                self.rtt_us
                    .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.up();
                Verdict::Up
            }
            Err(e) if fresh => {
                self.note_error(&e);
                self.down(&e);
                Verdict::Down
            }
            Err(e) => {
                self.note_error(&e);
                self.down(&e);
                Verdict::Rebuild
            }
        }
    }

    fn probe_failed(&self, e: StateError) -> Verdict {
        self.note_error(&e);
        self.down(&e);
        Verdict::Failed(e)
    }
}

fn cluster_cmd(sub: &str) -> Cmd {
    let mut c = ::redis::cmd("CLUSTER");
    c.arg(sub);
    c
}
