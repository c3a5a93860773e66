//! `autoscale.discovery` (provider `command`): `dns: NAME:PORT` (A records) or
//! `dns_srv: NAME` (SRV records), an optional `resolver` (`IP` or `IP:PORT`) and the
//! longest `interval` between lookups.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::Issues;
use super::file::DiscoveryFile;
use super::model::{Discovery, DnsQuery};
use super::node::Located;
use super::pool::nonzero_dur;

/// A DNS name as a resolver takes it: labels of letters, digits, `-` and `_` (SRV names
/// start with `_service._proto`), dot-separated, an optional final dot.
fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn resolver(r: &Located<String>, issues: &mut Issues) -> Option<SocketAddr> {
    let v = r.value.trim();
    let parsed = v
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
    if parsed.is_none() {
        issues.push(
            r.pos,
            format!(
                "discovery resolver \"{}\" must be IP or IP:PORT (e.g. 10.96.0.10 or 127.0.0.1:5353)",
                r.value
            ),
        );
    }
    parsed
}

fn a_query(dns: &Located<String>, issues: &mut Issues) -> Option<DnsQuery> {
    match dns
        .value
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse::<u16>()))
    {
        Some((host, Ok(port))) if dns_name(host) && port > 0 => Some(DnsQuery::A {
            name: host.to_string(),
            port,
        }),
        _ => {
            issues.push(
                dns.pos,
                format!(
                    "discovery dns \"{}\" must be NAME:PORT (A records, each member on PORT)",
                    dns.value
                ),
            );
            None
        }
    }
}

fn srv_query(srv: &Located<String>, issues: &mut Issues) -> Option<DnsQuery> {
    if dns_name(&srv.value) {
        return Some(DnsQuery::Srv {
            name: srv.value.clone(),
        });
    }
    issues.push(
        srv.pos,
        format!(
            "discovery dns_srv \"{}\" must be a DNS name, e.g. _http._tcp.api.prod.svc.cluster.local",
            srv.value
        ),
    );
    None
}

pub(crate) fn discovery(
    located: &Located<DiscoveryFile>,
    issues: &mut Issues,
) -> Option<Discovery> {
    let d = &located.value;
    let interval = nonzero_dur(
        &d.interval,
        Duration::from_secs(5),
        "discovery interval",
        issues,
    );
    let resolver = d.resolver.as_ref().map(|r| resolver(r, issues));
    let query = match (&d.dns, &d.dns_srv) {
        (Some(dns), None) => a_query(dns, issues),
        (None, Some(srv)) => srv_query(srv, issues),
        (Some(_), Some(srv)) => {
            issues.push(srv.pos, "discovery takes dns or dns_srv, not both");
            return None;
        }
        (None, None) => {
            issues.push(
                located.pos,
                "discovery needs dns (NAME:PORT, A records) or dns_srv (an SRV name)",
            );
            return None;
        }
    };
    let resolver = match resolver {
        Some(None) => return None,
        Some(r) => r,
        None => None,
    };
    Some(Discovery {
        query: query?,
        resolver,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::dns_name;

    #[test]
    fn dns_names() {
        for ok in [
            "a",
            "_http._tcp.api.prod.svc.cluster.local",
            "api.test.",
            "x-1.y",
        ] {
            assert!(dns_name(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "a b", "a:80", "a/b", &"x".repeat(64)] {
            assert!(!dns_name(bad), "{bad}");
        }
    }
}
