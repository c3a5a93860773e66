//! HTTP/3 on https listeners: `http3: true` and the QUIC limits of `quic: {...}` (streams,
//! idle timeout, UDP payload size, handshakes in progress, Retry, 0-RTT), with defaults and
//! every error at its line.

use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::{Dur, ListenerFile, StrOrInt};
use super::model::Protocol;
use super::node::Located;

/// When a new client must prove its address (a QUIC Retry) before its handshake is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    /// Once half of `max_handshakes` are in progress (a flood of Initial packets).
    Auto,
    /// Always (one more round trip for every new connection).
    Always,
}

/// An https listener's HTTP/3 (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3 {
    /// Requests (bidirectional streams) a client may have open at once on a connection.
    pub max_streams: u32,
    /// A connection without packets for this long is closed (QUIC's idle timeout).
    pub idle_timeout: Duration,
    /// The largest UDP datagram payload autolb accepts and announces.
    pub max_udp_payload: u16,
    /// Handshakes in progress on the listener at once; past it, new connections are
    /// refused; past half of it, clients whose address is not validated get a Retry.
    pub max_handshakes: usize,
    pub retry: RetryMode,
    /// Accept 0-RTT (early) data. Requests with an unsafe method wait for the handshake
    /// to complete (replayed early data is never acted on for them).
    pub early_data: bool,
}

impl Default for Http3 {
    fn default() -> Self {
        Http3 {
            max_streams: 100,
            idle_timeout: Duration::from_secs(30),
            max_udp_payload: 1452,
            max_handshakes: 1024,
            retry: RetryMode::Auto,
            early_data: false,
        }
    }
}

/// `listeners[].quic:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a quic mapping (max_streams, idle_timeout, max_udp_payload, max_handshakes, retry, early_data)"
)]
pub struct QuicFile {
    pub max_streams: Option<Located<u64>>,
    pub idle_timeout: Option<Located<Dur>>,
    pub max_udp_payload: Option<Located<StrOrInt>>,
    pub max_handshakes: Option<Located<u64>>,
    pub retry: Option<Located<RetryMode>>,
    pub early_data: Option<Located<bool>>,
}

/// `http3` and `quic` of a listener: `Some` when it serves HTTP/3.
pub(crate) fn listener_http3(
    file: &ListenerFile,
    protocol: Protocol,
    issues: &mut Issues,
) -> Option<Http3> {
    let name = file.name.value.trim();
    let on = file.http3.as_ref().filter(|h| h.value);
    if let Some(h) = on.filter(|_| protocol != Protocol::Https) {
        issues.push(
            h.pos,
            format!("http3 is only allowed on https listeners (listener \"{name}\")"),
        );
        return None;
    }
    let Some(quic) = &file.quic else {
        return on.map(|_| Http3::default());
    };
    if on.is_none() {
        issues.push(quic.pos, "quic needs http3: true");
        return None;
    }
    let f = &quic.value;
    let mut h = Http3::default();
    if let Some(n) = &f.max_streams {
        match u32::try_from(n.value) {
            Ok(v) if (1..=10_000).contains(&v) => h.max_streams = v,
            _ => issues.push(
                n.pos,
                format!("max_streams must be between 1 and 10000, got {}", n.value),
            ),
        }
    }
    if let Some(t) = &f.idle_timeout {
        // QUIC carries the idle timeout in milliseconds, at most 2^62.
        if t.value.0 < Duration::from_millis(100) || t.value.0 > Duration::from_secs(86_400) {
            issues.push(t.pos, "idle_timeout must be between 100ms and 24h");
        } else {
            h.idle_timeout = t.value.0;
        }
    }
    if let Some(p) = &f.max_udp_payload {
        let v = match &p.value {
            StrOrInt::Int(n) => u64::try_from(*n).ok(),
            StrOrInt::Str(s) => super::parse_size(s),
        };
        // RFC 9000: at least 1200; a UDP datagram carries at most 65527 bytes.
        match v.and_then(|v| u16::try_from(v).ok()) {
            Some(v) if (1200..=65527).contains(&v) => h.max_udp_payload = v,
            _ => issues.push(
                p.pos,
                "max_udp_payload must be between 1200 and 65527 bytes",
            ),
        }
    }
    if let Some(n) = &f.max_handshakes {
        if (2..=1_000_000).contains(&n.value) {
            h.max_handshakes = n.value as usize;
        } else {
            issues.push(
                n.pos,
                format!(
                    "max_handshakes must be between 2 and 1000000, got {}",
                    n.value
                ),
            );
        }
    }
    if let Some(r) = &f.retry {
        h.retry = r.value;
    }
    if let Some(e) = &f.early_data {
        h.early_data = e.value;
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, load};
    use super::*;

    fn https(extra: &str) -> String {
        format!(
            "listeners:\n  - name: s\n    listen: 0.0.0.0:8443\n    protocol: https\n    \
             pool: p\n    tls:\n      certificates: [{{ cert: a.crt, key: a.key }}]\n{extra}\
             pools:\n  p:\n    backends: [{{ address: 127.0.0.1:9000 }}]\n"
        )
    }

    #[test]
    fn http3_defaults_and_settings() {
        let c = load(&https("")).expect("valid");
        assert_eq!(c.listeners[0].http3, None);
        let c = load(&https("    http3: true\n")).expect("valid");
        assert_eq!(c.listeners[0].http3, Some(Http3::default()));
        assert!(!Http3::default().early_data);
        let c = load(&https(
            "    http3: true\n    quic: { max_streams: 50, idle_timeout: 10s, max_udp_payload: 1350, \
             max_handshakes: 64, retry: always, early_data: true }\n",
        ))
        .expect("valid");
        let h = c.listeners[0].http3.clone().expect("http3");
        assert_eq!(h.max_streams, 50);
        assert_eq!(h.idle_timeout, Duration::from_secs(10));
        assert_eq!(h.max_udp_payload, 1350);
        assert_eq!(h.max_handshakes, 64);
        assert_eq!(h.retry, RetryMode::Always);
        assert!(h.early_data);
    }

    #[test]
    fn http3_errors_point_at_their_value() {
        let yaml = "listeners:\n  - { name: w, listen: 0.0.0.0:80, protocol: http, pool: p, http3: true }\n\
                    pools:\n  p:\n    backends: [{ address: 127.0.0.1:9000 }]\n";
        assert_error(yaml, "true", "http3 is only allowed on https listeners");
        let yaml = https("    quic: { max_streams: 5 }\n");
        assert_error(&yaml, "{ max_streams", "quic needs http3: true");
        let yaml = https("    http3: true\n    quic: { max_streams: 0 }\n");
        assert_error(
            &yaml,
            "0 }",
            "max_streams must be between 1 and 10000, got 0",
        );
        let yaml = https("    http3: true\n    quic: { max_udp_payload: 1000 }\n");
        assert_error(
            &yaml,
            "1000",
            "max_udp_payload must be between 1200 and 65527 bytes",
        );
        let yaml = https("    http3: true\n    quic: { idle_timeout: 1ms }\n");
        assert_error(&yaml, "1ms", "idle_timeout must be between 100ms and 24h");
        let yaml = https("    http3: true\n    quic: { retry: sometimes }\n");
        assert_error(&yaml, "sometimes", "unknown value \"sometimes\"");
        let yaml = https("    http3: true\n    quic: { max_stream: 5 }\n");
        assert_error(&yaml, "max_stream:", "unknown field \"max_stream\"");
    }
}
