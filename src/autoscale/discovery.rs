//! DNS discovery of the `command` provider's members (hickory-resolver): `dns: NAME:PORT`
//! takes the A records of NAME, each member on PORT; `dns_srv: NAME` takes the SRV records
//! of NAME (of the lowest priority present), each member on the record's port with the
//! record's weight, at the addresses of its target, which is resolved again every round.
//! The resolver is the system's (/etc/resolv.conf, /etc/hosts) or the configured
//! `resolver`. The answer says when it expires (its shortest TTL), and the caller looks
//! again then, and at least every `interval`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::command::CommandError;
use crate::config::{Discovery, DnsQuery};

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Looks never closer together than this (or `interval` when shorter), whatever the TTL
/// (0 included).
const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Backend weights range over 1..=256; SRV weights are clamped into it.
const MAX_WEIGHT: u32 = 256;

/// One member found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// A lookup's members and when to look again.
#[derive(Debug)]
pub struct Answer {
    pub members: Vec<Member>,
    pub next: Duration,
}

/// A resolver for one pool's discovery (built again when `resolver` changes).
pub struct Dns {
    resolver: TokioResolver,
    server: Option<SocketAddr>,
}

fn resolve_error(name: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Resolve(name.to_string(), e.to_string())
}

impl Dns {
    /// The resolver asking `server`, or the system's when `None`.
    pub fn new(server: Option<SocketAddr>) -> Result<Dns, CommandError> {
        let builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| resolve_error("the system resolver (/etc/resolv.conf)", e))?,
        };
        let resolver = builder
            .build()
            .map_err(|e| resolve_error("the resolver", e))?;
        Ok(Dns { resolver, server })
    }

    /// The server this resolver asks (`None`: the system's).
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// IPv4 addresses of `name`, and when they expire.
    async fn ipv4(&self, name: &str) -> Result<(Vec<IpAddr>, Instant), CommandError> {
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(name))
            .await
            .map_err(|_| resolve_error(name, "timed out"))?
            .map_err(|e| resolve_error(name, e))?;
        let ips = lookup.iter().filter(IpAddr::is_ipv4).collect();
        Ok((ips, lookup.valid_until()))
    }

    /// Look the members up once.
    pub async fn lookup(&self, d: &Discovery) -> Result<Answer, CommandError> {
        let now = Instant::now();
        let mut members = Vec::new();
        let mut until = now + d.interval;
        match &d.query {
            DnsQuery::A { name, port } => {
                let (ips, valid) = self.ipv4(name).await?;
                until = until.min(valid);
                members.extend(ips.into_iter().map(|ip| Member {
                    addr: SocketAddr::new(ip, *port),
                    weight: 1,
                }));
            }
            DnsQuery::Srv { name } => {
                let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.srv_lookup(name))
                    .await
                    .map_err(|_| resolve_error(name, "timed out"))?
                    .map_err(|e| resolve_error(name, e))?;
                until = until.min(lookup.valid_until());
                let records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        // A target of "." says the service is not available there.
                        RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
                        _ => None,
                    })
                    .collect();
                let best = records.iter().map(|s| s.priority).min();
                for srv in records.iter().filter(|s| Some(s.priority) == best) {
                    let target = srv.target.to_utf8();
                    let (ips, valid) = self.ipv4(&target).await?;
                    until = until.min(valid);
                    let weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
                    members.extend(ips.into_iter().map(|ip| Member {
                        addr: SocketAddr::new(ip, srv.port),
                        weight,
                    }));
                }
            }
        }
        members.sort();
        members.dedup_by_key(|m| m.addr);
        let next = until
            .saturating_duration_since(now)
            .max(MIN_PERIOD.min(d.interval));
        Ok(Answer { members, next })
    }
}
