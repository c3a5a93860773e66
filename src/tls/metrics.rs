//! TLS counters per listener (handshakes by version, failures by reason, certificate
//! reloads) and their Prometheus rendering.

use std::fmt::Write;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::prom::{header, label};

/// Why a client handshake failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No ClientHello/handshake within the listener's idle timeout.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// Not TLS, or a malformed/unexpected message.
    Protocol,
    /// No common version (TLS 1.2+), cipher suite or signature scheme.
    Incompatible,
    /// No certificate for the requested name (`strict_sni`).
    NoCertificate,
    /// The client offered ALPN protocols but none of ours.
    Alpn,
    /// The client aborted with an alert (e.g. it does not trust our certificate).
    AlertReceived,
    /// `client_auth`: no client certificate, or one that does not verify.
    ClientCertificate,
    Other,
}

const REASONS: [Failure; 9] = [
    Failure::Timeout,
    Failure::Closed,
    Failure::Protocol,
    Failure::Incompatible,
    Failure::NoCertificate,
    Failure::Alpn,
    Failure::AlertReceived,
    Failure::ClientCertificate,
    Failure::Other,
];

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Protocol => "protocol",
            Failure::Incompatible => "incompatible",
            Failure::NoCertificate => "no_certificate",
            Failure::Alpn => "alpn",
            Failure::AlertReceived => "alert_received",
            Failure::ClientCertificate => "client_certificate",
            Failure::Other => "other",
        }
    }

    /// Classify an error returned by tokio-rustls's accept.
    pub fn of(e: &io::Error) -> Failure {
        use rustls::Error as E;
        match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::General(_)) => Failure::NoCertificate,
            Some(E::NoApplicationProtocol) => Failure::Alpn,
            Some(E::PeerIncompatible(_)) => Failure::Incompatible,
            Some(E::AlertReceived(_)) => Failure::AlertReceived,
            Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => {
                Failure::ClientCertificate
            }
            Some(
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerMisbehaved(_)
                | E::DecryptError,
            ) => Failure::Protocol,
            Some(_) => Failure::Other,
            None => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Failure::Closed,
                io::ErrorKind::InvalidData => Failure::Protocol,
                _ => Failure::Other,
            },
        }
    }

    fn index(self) -> usize {
        REASONS
            .iter()
            .position(|r| *r == self)
            .unwrap_or(REASONS.len() - 1)
    }
}

/// Counters of one https listener.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub tls12: AtomicU64,
    pub tls13: AtomicU64,
    failures: [AtomicU64; REASONS.len()],
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Certificate path -> not-after (Unix seconds) of the pairs now served.
    pub expiry: Mutex<Vec<(String, i64)>>,
}

impl TlsStats {
    pub fn handshake(&self, version: Option<rustls::ProtocolVersion>) {
        match version {
            Some(rustls::ProtocolVersion::TLSv1_2) => &self.tls12,
            _ => &self.tls13,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn failure(&self, why: Failure) {
        self.failures[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, why: Failure) -> u64 {
        self.failures[why.index()].load(Ordering::Relaxed)
    }
}

/// Append the TLS metrics of `listeners` (name, stats) in the Prometheus text format.
pub fn render(out: &mut String, listeners: &[(String, &TlsStats)]) {
    if listeners.is_empty() {
        return;
    }
    header(
        out,
        "tls_handshakes_total",
        "counter",
        "Completed TLS handshakes per listener and protocol version.",
    );
    for (name, st) in listeners {
        let n = label(name);
        for (version, c) in [("TLSv1.2", &st.tls12), ("TLSv1.3", &st.tls13)] {
            let _ = writeln!(
                out,
                "autolb_tls_handshakes_total{{listener=\"{n}\",version=\"{version}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "tls_handshake_errors_total",
        "counter",
        "Failed TLS handshakes per listener and reason.",
    );
    for (name, st) in listeners {
        let n = label(name);
        for r in REASONS {
            let _ = writeln!(
                out,
                "autolb_tls_handshake_errors_total{{listener=\"{n}\",reason=\"{}\"}} {}",
                r.label(),
                st.failures(r)
            );
        }
    }
    header(
        out,
        "tls_certificate_reloads_total",
        "counter",
        "Certificate reloads per listener (failure: the old certificates kept serving).",
    );
    for (name, st) in listeners {
        let n = label(name);
        for (result, c) in [("success", &st.reloads_ok), ("failure", &st.reloads_failed)] {
            let _ = writeln!(
                out,
                "autolb_tls_certificate_reloads_total{{listener=\"{n}\",result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "Not-after date of each served certificate, in Unix seconds.",
    );
    for (name, st) in listeners {
        let n = label(name);
        if let Ok(expiry) = st.expiry.lock() {
            for (cert, not_after) in expiry.iter() {
                let _ = writeln!(
                    out,
                    "autolb_tls_certificate_expiry_timestamp_seconds{{listener=\"{n}\",certificate=\"{}\"}} {not_after}",
                    label(cert)
                );
            }
        }
    }
}
