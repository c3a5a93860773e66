//! TLS passthrough: the server name of a ClientHello, read by peeking (nothing is consumed,
//! the bytes go to the backend untouched) with a bounded, panic-free parser; handshake
//! messages split over several records are reassembled (up to `MAX_HELLO` bytes).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy_proto::{peek_until, ProxyError};

/// The largest ClientHello looked at (records and handshake bytes together).
pub const MAX_HELLO: usize = 16 * 1024;
/// TLS record payloads are at most 2^14 bytes (plus expansion for protected records).
const MAX_RECORD: usize = 16 * 1024 + 2048;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A prefix of a ClientHello: peek more.
    Incomplete,
    /// A complete ClientHello and its server name (lower-case, no trailing dot), if any.
    Done(Option<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Read(#[from] ProxyError),
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed("length past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, SniError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Result<&'a [u8], SniError> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n)
    }
}

/// Parse the TLS records at the start of `buf` as a ClientHello.
pub fn parse(buf: &[u8]) -> Result<Hello, SniError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut off = 0;
    // Each round consumes one non-empty record: bounded by the buffer's length.
    loop {
        let Some(header) = buf.get(off..off + 5) else {
            // Reject early what cannot be TLS, on the first bytes already.
            return match buf.get(off) {
                Some(&t) if t != 22 => Err(SniError::NotTls),
                _ if off == 0 && buf.len() >= 2 && buf[1] != 3 => Err(SniError::NotTls),
                _ => Ok(Hello::Incomplete),
            };
        };
        if header[0] != 22 {
            return Err(if off == 0 {
                SniError::NotTls
            } else {
                SniError::Malformed("handshake interleaved with other records")
            });
        }
        if header[1] != 3 {
            return Err(SniError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(SniError::Malformed("bad record length"));
        }
        let Some(fragment) = buf.get(off + 5..off + 5 + len) else {
            return if off + 5 + len > MAX_HELLO + 5 * 4 {
                Err(SniError::Malformed("ClientHello too large"))
            } else {
                Ok(Hello::Incomplete)
            };
        };
        off += 5 + len;
        handshake.extend_from_slice(fragment);
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != 1 {
            return Err(SniError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
        let body_len = (usize::from(handshake[1]) << 16)
            | (usize::from(handshake[2]) << 8)
            | usize::from(handshake[3]);
        if body_len > MAX_HELLO {
            return Err(SniError::Malformed("ClientHello too large"));
        }
        if let Some(body) = handshake.get(4..4 + body_len) {
            return server_name(body).map(Hello::Done);
        }
        if off > MAX_HELLO + 5 * 4 {
            return Err(SniError::Malformed("ClientHello too large"));
        }
    }
}

/// The `server_name` extension's host name in a ClientHello body.
fn server_name(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut c = Cursor(body);
    c.take(2 + 32)?; // legacy_version, random
    c.vec(1)?; // legacy_session_id
    c.vec(2)?; // cipher_suites
    c.vec(1)?; // legacy_compression_methods
    if c.0.is_empty() {
        return Ok(None); // no extensions at all (SSLv3-style hello)
    }
    let mut exts = Cursor(c.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind != 0 {
            continue;
        }
        let mut list = Cursor(Cursor(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type != 0 {
                continue;
            }
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 255
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                })
                .ok_or(SniError::Malformed("server name is not a host name"))?;
            return Ok(Some(name.trim_end_matches('.').to_ascii_lowercase()));
        }
        return Ok(None);
    }
    Ok(None)
}

/// Peek the ClientHello on `stream` (within `timeout`) and return its server name.
pub async fn peek_server_name(
    stream: &TcpStream,
    timeout: Duration,
) -> Result<Option<String>, SniError> {
    let mut buf = vec![0u8; MAX_HELLO + 5 * 4];
    let deadline = Instant::now() + timeout;
    peek_until(stream, &mut buf, deadline, timeout, |b| match parse(b)? {
        Hello::Incomplete => Ok(None),
        Hello::Done(name) => Ok(Some(name)),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name` (None: no SNI).
    fn client_hello(name: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut cfg = cfg;
        cfg.enable_sni = name.is_some();
        let server = rustls::pki_types::ServerName::try_from(name.unwrap_or("x.invalid"))
            .expect("name")
            .to_owned();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn real_hello_with_and_without_sni() {
        let h = client_hello(Some("DB.Example.com"));
        assert_eq!(
            parse(&h).expect("ok"),
            Hello::Done(Some("db.example.com".into()))
        );
        assert_eq!(parse(&client_hello(None)).expect("ok"), Hello::Done(None));
    }

    #[test]
    fn truncated_is_incomplete_and_split_records_reassemble() {
        let h = client_hello(Some("a.example.com"));
        for i in 0..h.len() {
            assert_eq!(parse(&h[..i]).expect("prefix"), Hello::Incomplete, "{i}");
        }
        // The same handshake split over two records.
        let hs = &h[5..];
        let (a, b) = hs.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            parse(&split).expect("ok"),
            Hello::Done(Some("a.example.com".into()))
        );
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(SniError::NotTls)
        ));
        assert!(matches!(parse(b"\x16\x01"), Err(SniError::NotTls)));
        assert!(parse(&[22, 3, 1, 0, 0]).is_err());
        assert!(parse(&[22, 3, 1, 0xff, 0xff]).is_err());
        // A record whose handshake is not a ClientHello.
        assert!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]).is_err());
        // Lengths that point past the end, at every position of a real hello.
        let h = client_hello(Some("a.example.com"));
        for i in 9..h.len() {
            let mut m = h.clone();
            m[i] = 0xff;
            let _ = parse(&m);
            m[i] = 0;
            let _ = parse(&m);
        }
        let mut x: u32 = 1;
        for _ in 0..3000 {
            let mut b = vec![22, 3, 1];
            for _ in 0..(x % 300) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b.push((x >> 16) as u8);
            }
            let _ = parse(&b);
        }
    }
}
