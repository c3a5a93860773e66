//! The Redis topology autolb last saw: masters and their replicas (from `CLUSTER NODES`, or
//! `ROLE` on a standalone or Sentinel-managed master), the promotions between two views,
//! and the JSON of `/redis/status`.

use serde_json::{json, Value};

use super::link::Addr;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Cluster node id ("" outside a cluster).
    pub id: String,
    pub addr: String,
    pub master: bool,
    /// A replica's master: its cluster id, or its address outside a cluster.
    pub master_of: Option<String>,
    /// Slot ranges served ("" for a replica, "0-16383" for a standalone master).
    pub slots: String,
    pub failed: bool,
    /// `connected`/`disconnected` (the cluster's own link state).
    pub link: String,
    /// The node the topology was read from.
    pub myself: bool,
}

/// Nodes sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub cluster: bool,
    pub nodes: Vec<Node>,
}

/// A failover autolb followed: the master that went away and the one that replaced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub from: String,
    pub to: String,
}

impl Topology {
    /// `CLUSTER NODES` text. Nodes without an address (`:0`, being forgotten) are skipped.
    pub fn from_cluster_nodes(text: &str) -> Topology {
        let mut nodes: Vec<Node> = text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    return None;
                }
                let addr = f[1].split(['@', ',']).next().unwrap_or(f[1]);
                if addr.starts_with(':') || addr.ends_with(":0") {
                    return None;
                }
                let flags = f[2];
                let master = flags.contains("master");
                Some(Node {
                    id: f[0].to_string(),
                    addr: addr.to_string(),
                    master,
                    master_of: (!master && f[3] != "-").then(|| f[3].to_string()),
                    slots: f[8..]
                        .iter()
                        .filter(|s| !s.starts_with('['))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                    failed: flags.contains("fail") && !flags.contains("fail?")
                        || flags.contains("noaddr"),
                    link: f[7].to_string(),
                    myself: flags.contains("myself"),
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
        Topology {
            cluster: true,
            nodes,
        }
    }

    /// A standalone master at `addr` and the replicas of its `ROLE` reply.
    pub fn from_role(addr: &Addr, role: &::redis::Value) -> Topology {
        let master = addr.to_string();
        let mut nodes = vec![Node {
            id: String::new(),
            addr: master.clone(),
            master: true,
            master_of: None,
            slots: "0-16383".into(),
            failed: false,
            link: "connected".into(),
            myself: true,
        }];
        if let ::redis::Value::Array(parts) = role {
            if let Some(::redis::Value::Array(replicas)) = parts.get(2) {
                for r in replicas {
                    let ::redis::Value::Array(f) = r else {
                        continue;
                    };
                    let text = |v: Option<&::redis::Value>| match v {
                        Some(::redis::Value::BulkString(b)) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        Some(::redis::Value::SimpleString(s)) => s.clone(),
                        Some(::redis::Value::Int(i)) => i.to_string(),
                        _ => String::new(),
                    };
                    let (host, port) = (text(f.first()), text(f.get(1)));
                    let Some(a) = Addr::parse(&format!("{host}:{port}")) else {
                        continue;
                    };
                    nodes.push(Node {
                        id: String::new(),
                        addr: a.to_string(),
                        master: false,
                        master_of: Some(master.clone()),
                        slots: String::new(),
                        failed: false,
                        link: "connected".into(),
                        myself: false,
                    });
                }
            }
        }
        nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
        Topology {
            cluster: false,
            nodes,
        }
    }

    /// Every node's address (to reconnect through).
    pub fn addrs(&self) -> Vec<Addr> {
        self.nodes
            .iter()
            .filter_map(|n| Addr::parse(&n.addr))
            .collect()
    }

    /// Masters that serve slots and are not failed.
    fn serving(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
    }

    /// Whether every master serving slots is reachable in the cluster's own view.
    pub fn healthy(&self) -> bool {
        self.serving().next().is_some()
            && self
                .nodes
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .all(|n| !n.failed)
    }

    /// Replicas of `before` that now serve as masters in place of their old master.
    pub fn promotions(&self, before: &Topology) -> Vec<Promotion> {
        let mut out = Vec::new();
        for now in self.serving() {
            let Some(was) = before.nodes.iter().find(|n| {
                if self.cluster {
                    n.id == now.id
                } else {
                    n.addr == now.addr
                }
            }) else {
                continue;
            };
            if was.master {
                continue;
            }
            let Some(old) = was.master_of.as_ref() else {
                continue;
            };
            let from = before
                .nodes
                .iter()
                .find(|n| &n.id == old || &n.addr == old)
                .map_or_else(|| old.clone(), |n| n.addr.clone());
            out.push(Promotion {
                from,
                to: now.addr.clone(),
            });
        }
        out
    }

    /// The `nodes` list of `/redis/status`.
    pub fn nodes_json(&self) -> Vec<Value> {
        self.nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id.get(..8).unwrap_or(&n.id),
                    "address": n.addr,
                    "role": if n.master { "master" } else { "replica" },
                    "myself": n.myself,
                    "failed": n.failed,
                    "link": n.link,
                    "slots": n.slots,
                })
            })
            .collect()
    }

    /// The `topology` of `/redis/status`: masters with their replicas, and what autolb uses
    /// each node for.
    pub fn json(&self) -> Value {
        let masters: Vec<Value> = self
            .nodes
            .iter()
            .filter(|n| n.master)
            .map(|m| {
                let replicas: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|r| {
                        !r.master
                            && r.master_of
                                .as_deref()
                                .is_some_and(|o| o == m.id || o == m.addr)
                    })
                    .map(|r| r.addr.as_str())
                    .collect();
                let serves = if m.failed || m.slots.is_empty() {
                    "nothing".to_string()
                } else if self.cluster {
                    format!("reads and writes of slots {}", m.slots)
                } else {
                    "every read and write".to_string()
                };
                json!({
                    "address": m.addr,
                    "failed": m.failed,
                    "slots": m.slots,
                    "replicas": replicas,
                    "autolb_uses_it_for": serves,
                })
            })
            .collect();
        let replicas: Vec<Value> = self
            .nodes
            .iter()
            .filter(|n| !n.master)
            .map(|r| {
                let of = r.master_of.as_ref().map(|o| {
                    self.nodes
                        .iter()
                        .find(|m| &m.id == o || &m.addr == o)
                        .map_or(o.clone(), |m| m.addr.clone())
                });
                json!({
                    "address": r.addr,
                    "replica_of": of,
                    "failed": r.failed,
                    "autolb_uses_it_for": "nothing until it is promoted",
                })
            })
            .collect();
        json!({ "masters": masters, "replicas": replicas })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
aaaa1111 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
bbbb2222 127.0.0.1:30002@40002 master - 0 0 2 connected 5461-10922
cccc3333 127.0.0.1:30003@40003 master - 0 0 3 connected 10923-16383
dddd4444 127.0.0.1:30004@40004 slave aaaa1111 0 0 1 connected
eeee5555 127.0.0.1:30005@40005,host slave bbbb2222 0 0 2 connected
";

    const AFTER: &str = "\
aaaa1111 127.0.0.1:30001@40001 master,fail - 0 0 1 disconnected
bbbb2222 127.0.0.1:30002@40002 myself,master - 0 0 2 connected 5461-10922
cccc3333 127.0.0.1:30003@40003 master - 0 0 3 connected 10923-16383
dddd4444 127.0.0.1:30004@40004 master - 0 0 7 connected 0-5460
eeee5555 127.0.0.1:30005@40005 slave bbbb2222 0 0 2 connected
";

    #[test]
    fn cluster_nodes_parse() {
        let t = Topology::from_cluster_nodes(BEFORE);
        assert_eq!(t.nodes.len(), 5);
        assert_eq!(t.nodes[0].addr, "127.0.0.1:30001");
        assert!(t.nodes[0].master && t.nodes[0].myself);
        assert_eq!(t.nodes[0].slots, "0-5460");
        assert_eq!(t.nodes[4].addr, "127.0.0.1:30005");
        assert_eq!(t.nodes[4].master_of.as_deref(), Some("bbbb2222"));
        assert!(t.healthy());
        let j = t.json();
        assert_eq!(j["masters"][0]["replicas"][0], "127.0.0.1:30004");
        assert_eq!(j["replicas"][0]["replica_of"], "127.0.0.1:30001");
        assert_eq!(t.nodes_json()[3]["role"], "replica");
    }

    #[test]
    fn a_promoted_replica_is_a_failover() {
        let before = Topology::from_cluster_nodes(BEFORE);
        let after = Topology::from_cluster_nodes(AFTER);
        assert_eq!(
            after.promotions(&before),
            vec![Promotion {
                from: "127.0.0.1:30001".into(),
                to: "127.0.0.1:30004".into()
            }]
        );
        assert!(before.promotions(&before).is_empty());
        assert!(after.healthy(), "the failed master serves no slot any more");
        let down = AFTER.replace("0 0 7 connected 0-5460", "0 0 7 connected");
        let down = down.replace(
            "master,fail - 0 0 1 disconnected",
            "master,fail - 0 0 1 disconnected 0-5460",
        );
        assert!(!Topology::from_cluster_nodes(&down).healthy());
    }

    #[test]
    fn role_lists_the_replicas() {
        use ::redis::Value as V;
        let role = V::Array(vec![
            V::BulkString(b"master".to_vec()),
            V::Int(10),
            V::Array(vec![V::Array(vec![
                V::BulkString(b"127.0.0.1".to_vec()),
                V::BulkString(b"6380".to_vec()),
                V::BulkString(b"10".to_vec()),
            ])]),
        ]);
        let addr = Addr::parse("127.0.0.1:6379").expect("addr");
        let t = Topology::from_role(&addr, &role);
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.json()["masters"][0]["replicas"][0], "127.0.0.1:6380");
        let mut after = Topology::from_role(&Addr::parse("127.0.0.1:6380").expect("addr"), &V::Nil);
        after.nodes[0].master = true;
        assert_eq!(
            after.promotions(&t),
            vec![Promotion {
                from: "127.0.0.1:6379".into(),
                to: "127.0.0.1:6380".into()
            }]
        );
    }
}
