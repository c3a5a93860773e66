//! One active check of one backend: a TCP connect, an HTTP GET whose status must be in
//! the expected list (over the backend's TLS and HTTP version), or a gRPC health call
//! (`grpc`); each on a fresh connection, bounded by the check timeout.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{CONNECTION, HOST, USER_AGENT};
use http::HeaderValue;
use tokio::net::TcpStream;

use crate::config::{HealthCheck, HealthCheckKind};
use crate::upstream::ConnPool;
use crate::upstream::RequestBody;

/// A check's verdict: passed or not, and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub detail: String,
}

impl Verdict {
    fn fail(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Probe `addr` (with the check's port override) once; http checks speak the backend's
/// protocol (HTTP/1.1 or HTTP/2, over TLS when its pool has `tls`) through `conns`.
pub async fn probe(
    conns: &ConnPool,
    addr: SocketAddr,
    backend_name: &str,
    cfg: &HealthCheck,
) -> Verdict {
    let mut target = addr;
    if let Some(port) = cfg.port {
        target.set_port(port);
    }
    match tokio::time::timeout(cfg.timeout, run(conns, target, backend_name, cfg)).await {
        Ok(v) => v,
        Err(_) => Verdict::fail(format!("timed out after {:?}", cfg.timeout)),
    }
}

async fn run(
    conns: &ConnPool,
    target: SocketAddr,
    backend_name: &str,
    cfg: &HealthCheck,
) -> Verdict {
    if cfg.kind == HealthCheckKind::Tcp {
        return match TcpStream::connect(target).await {
            Ok(_) => Verdict {
                ok: true,
                detail: "connected".into(),
            },
            Err(e) => Verdict::fail(format!("connect: {e}")),
        };
    }
    let host = cfg.host.as_deref().unwrap_or(backend_name);
    if cfg.kind == HealthCheckKind::Grpc {
        return match super::grpc::request(&cfg.service, host) {
            Err(e) => Verdict::fail(format!("bad request: {e}")),
            Ok(req) => match conns.probe(target, req, cfg.timeout).await {
                Err(e) => Verdict::fail(e.to_string()),
                Ok(resp) => super::grpc::verdict(resp).await,
            },
        };
    }
    let req = http::Request::get(cfg.path.as_str())
        .header(
            HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("localhost")),
        )
        .header(USER_AGENT, HeaderValue::from_static("autolb-health-check"))
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(RequestBody::Empty);
    match req {
        Err(e) => Verdict::fail(format!("bad request: {e}")),
        Ok(req) => match conns.probe(target, req, cfg.timeout).await {
            Err(e) => Verdict::fail(e.to_string()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let ok = cfg
                    .expected_status
                    .iter()
                    .any(|&(lo, hi)| (lo..=hi).contains(&status));
                Verdict {
                    ok,
                    detail: format!("status {status}"),
                }
            }
        },
    }
}

/// The delay before the next check: `interval` with +-10% jitter, so checks of many backends
/// spread out instead of arriving in bursts.
pub fn next_delay(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 10;
    if spread == 0 {
        return interval;
    }
    let offset = fastrand::u64(0..=2 * spread);
    (interval + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = next_delay(Duration::from_secs(2));
            assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        }
    }
}
