//! One active check of one backend: a TCP connect, or an HTTP GET whose status must be in
//! the expected list; each on a fresh connection, bounded by the check timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::HeaderValue;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{HealthCheck, HealthCheckKind};

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

/// Probe `addr` (with the check's port override) once.
pub async fn probe(addr: SocketAddr, backend_name: &str, cfg: &HealthCheck) -> Verdict {
    let mut target = addr;
    if let Some(port) = cfg.port {
        target.set_port(port);
    }
    match tokio::time::timeout(cfg.timeout, run(target, backend_name, cfg)).await {
        Ok(v) => v,
        Err(_) => Verdict::fail(format!("timed out after {:?}", cfg.timeout)),
    }
}

async fn run(target: SocketAddr, backend_name: &str, cfg: &HealthCheck) -> Verdict {
    let stream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => return Verdict::fail(format!("connect: {e}")),
    };
    if cfg.kind == HealthCheckKind::Tcp {
        return Verdict {
            ok: true,
            detail: "connected".into(),
        };
    }
    let _ = stream.set_nodelay(true);
    let (mut tx, conn) = match http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await {
        Ok(p) => p,
        Err(e) => return Verdict::fail(format!("handshake: {e}")),
    };
    let conn_task = tokio::spawn(conn);
    let host = cfg.host.as_deref().unwrap_or(backend_name);
    let req = http::Request::get(cfg.path.as_str())
        .header(
            HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("localhost")),
        )
        .header(USER_AGENT, HeaderValue::from_static("autolb-health-check"))
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::new());
    let verdict = match req {
        Err(e) => Verdict::fail(format!("bad request: {e}")),
        Ok(req) => match tx.send_request(req).await {
            Err(e) => Verdict::fail(format!("request: {e}")),
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
    };
    conn_task.abort();
    verdict
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
