//! PROXY protocol v1 (text) and v2 (binary): a panic-free parser over a bounded buffer, the
//! encoders, and reading exactly one header off a socket (peeked first, so not one byte of
//! what follows it is consumed), and a fresh connection's addresses (`client_addrs`).

pub mod client_addrs;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ProxyVersion;

/// The v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (spec: 107 bytes).
pub const V1_MAX: usize = 107;
/// The longest v2 header autolb accepts (16 fixed bytes, addresses and TLVs).
pub const V2_MAX: usize = 16 + 2048;

/// The addresses a connection carries: the client (`src`) and what it connected to (`dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid header: read more.
    Incomplete,
    /// A whole header of `len` bytes; `addrs` is `None` for v1 `UNKNOWN`, v2 `LOCAL` and
    /// address families without IP addresses (use the connection's own).
    Done {
        addrs: Option<ProxyAddrs>,
        len: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("no complete header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete header")]
    Closed,
    #[error("no complete header within the first {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Parse the start of `buf` as a v1 or v2 header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let k = buf.len().min(V2_SIG.len());
    if buf[..k] == V2_SIG[..k] {
        return parse_v2(buf);
    }
    let k = buf.len().min(6);
    if buf[..k] == b"PROXY "[..k] {
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1("no CRLF within 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let len = end + 2;
    let line = std::str::from_utf8(&window[6..end]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.first().copied() {
        // The rest of an UNKNOWN line is ignored (spec 2.1).
        Some("UNKNOWN") => Ok(Parsed::Done { addrs: None, len }),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::V1("expected 4 fields after the family"));
            };
            let v6 = family == "TCP6";
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                let ip = if v6 {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                };
                ip.map_err(|_| ProxyError::V1("bad address"))
            };
            let port = |s: &str| -> Result<u16, ProxyError> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProxyError::V1("bad port"));
                }
                s.parse::<u16>().map_err(|_| ProxyError::V1("bad port"))
            };
            Ok(Parsed::Done {
                addrs: Some(ProxyAddrs {
                    src: SocketAddr::new(ip(src)?, port(sport)?),
                    dst: SocketAddr::new(ip(dst)?, port(dport)?),
                }),
                len,
            })
        }
        _ => Err(ProxyError::V1("unknown protocol family")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if len > V2_MAX {
        return Err(ProxyError::V2("header too long"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2("unknown command")),
    };
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    if local {
        return Ok(Parsed::Done { addrs: None, len });
    }
    let addrs = match family {
        // TCP over IPv4 / IPv6.
        0x11 => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyError::V2("IPv4 addresses truncated"))?;
            let src = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let dst = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(ProxyAddrs {
                src: SocketAddr::new(src.into(), u16::from_be_bytes([b[8], b[9]])),
                dst: SocketAddr::new(dst.into(), u16::from_be_bytes([b[10], b[11]])),
            })
        }
        0x21 => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyError::V2("IPv6 addresses truncated"))?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&b[..16]);
            dst.copy_from_slice(&b[16..32]);
            Some(ProxyAddrs {
                src: SocketAddr::new(
                    Ipv6Addr::from(src).into(),
                    u16::from_be_bytes([b[32], b[33]]),
                ),
                dst: SocketAddr::new(
                    Ipv6Addr::from(dst).into(),
                    u16::from_be_bytes([b[34], b[35]]),
                ),
            })
        }
        // UNSPEC, UNIX: no IP addresses; the connection's own are used (spec 2.2).
        0x00 | 0x31 | 0x32 => None,
        // Datagram families make no sense on a stream.
        0x12 | 0x22 => return Err(ProxyError::V2("UDP family on a TCP connection")),
        _ => return Err(ProxyError::V2("unknown address family")),
    };
    Ok(Parsed::Done { addrs, len })
}

/// Both addresses in one family: IPv4 when both can be, IPv6 (v4-mapped) otherwise.
fn same_family(a: ProxyAddrs) -> (IpAddr, IpAddr) {
    match (a.src.ip().to_canonical(), a.dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.into(), d.into()),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            (v6(s).into(), v6(d).into())
        }
    }
}

/// The header for `addrs` (`None`: v1 `UNKNOWN`, v2 `LOCAL`, e.g. for health checks).
pub fn encode(version: ProxyVersion, addrs: Option<ProxyAddrs>) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => encode_v1(addrs),
        ProxyVersion::V2 => encode_v2(addrs),
    }
}

fn encode_v1(addrs: Option<ProxyAddrs>) -> Vec<u8> {
    let Some(a) = addrs else {
        return b"PROXY UNKNOWN\r\n".to_vec();
    };
    let (src, dst) = same_family(a);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {src} {dst} {} {}\r\n",
        a.src.port(),
        a.dst.port()
    )
    .into_bytes()
}

fn encode_v2(addrs: Option<ProxyAddrs>) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIG);
    let Some(a) = addrs else {
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    out.push(0x21);
    match same_family(a) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s));
            out.extend_from_slice(&v6(d));
        }
    }
    out.extend_from_slice(&a.src.port().to_be_bytes());
    out.extend_from_slice(&a.dst.port().to_be_bytes());
    out
}

/// Read one PROXY header off `stream` within `timeout`, consuming exactly its bytes.
/// `Ok(None)`: a header without addresses (v1 UNKNOWN, v2 LOCAL).
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<ProxyAddrs>, ProxyError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; V2_MAX];
    let len = peek_until(stream, &mut buf, deadline, timeout, |b| match parse(b)? {
        Parsed::Incomplete => Ok::<_, ProxyError>(None),
        Parsed::Done { addrs, len } => Ok(Some((addrs, len))),
    })
    .await?;
    let (addrs, len) = len;
    let mut consumed = 0;
    while consumed < len {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf[consumed..len]))
            .await
            .map_err(|_| ProxyError::Timeout(timeout))??;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        consumed += n;
    }
    Ok(addrs)
}

/// Peek into `buf` until `done` says the bytes so far are complete (or fail), the buffer is
/// full, the peer closes, or `deadline` passes. Nothing is consumed.
pub(crate) async fn peek_until<T, E>(
    stream: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    timeout: Duration,
    mut done: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, E>
where
    E: From<ProxyError>,
{
    let mut seen = 0;
    // Each round either saw new bytes or slept: bounded by the deadline and this cap.
    for _ in 0..100_000 {
        let n = match tokio::time::timeout_at(deadline, stream.peek(buf)).await {
            Err(_) => return Err(ProxyError::Timeout(timeout).into()),
            Ok(Err(e)) => return Err(ProxyError::Io(e).into()),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(ProxyError::Closed.into());
        }
        if let Some(v) = done(&buf[..n])? {
            return Ok(v);
        }
        if n >= buf.len() {
            return Err(ProxyError::TooLong(buf.len()).into());
        }
        if n == seen {
            // A partial header and nothing new yet: peek would return at once again.
            let wake = (Instant::now() + Duration::from_millis(5)).min(deadline);
            tokio::time::sleep_until(wake).await;
        }
        seen = n;
    }
    Err(ProxyError::Timeout(timeout).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> ProxyAddrs {
        ProxyAddrs {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(h).expect("ok"),
            Parsed::Done {
                addrs: Some(addrs("192.0.2.1:56324", "198.51.100.2:443")),
                len: h.len() - 5
            }
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert_eq!(
            parse(h).expect("ok"),
            Parsed::Done {
                addrs: Some(addrs("[2001:db8::1]:1", "[::1]:65535")),
                len: h.len()
            }
        );
        let h = b"PROXY UNKNOWN whatever\r\n";
        assert_eq!(
            parse(h).expect("ok"),
            Parsed::Done {
                addrs: None,
                len: h.len()
            }
        );
    }

    #[test]
    fn v1_truncated_and_garbage() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for i in 0..h.len() - 1 {
            assert_eq!(parse(&h[..i]).expect("prefix"), Parsed::Incomplete, "{i}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY \xff\xfe\r\n",
            b"GET / HTTP/1.1\r\n",
            b"proxy TCP4",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_round_trip_and_local() {
        for a in [
            addrs("192.0.2.1:56324", "198.51.100.2:443"),
            addrs("[2001:db8::1]:1", "[::1]:65535"),
        ] {
            let h = encode(ProxyVersion::V2, Some(a));
            assert_eq!(
                parse(&h).expect("ok"),
                Parsed::Done {
                    addrs: Some(a),
                    len: h.len()
                }
            );
            let h1 = encode(ProxyVersion::V1, Some(a));
            assert_eq!(
                parse(&h1).expect("ok"),
                Parsed::Done {
                    addrs: Some(a),
                    len: h1.len()
                }
            );
        }
        // Mixed families become IPv6 (v4-mapped).
        let mixed = encode(
            ProxyVersion::V1,
            Some(addrs("1.2.3.4:5", "[2001:db8::2]:6")),
        );
        assert_eq!(
            mixed,
            b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 5 6\r\n".to_vec()
        );
        let local = encode(ProxyVersion::V2, None);
        assert_eq!(
            parse(&local).expect("ok"),
            Parsed::Done {
                addrs: None,
                len: 16
            }
        );
        assert_eq!(
            encode(ProxyVersion::V1, None),
            b"PROXY UNKNOWN\r\n".to_vec()
        );
    }

    #[test]
    fn v2_truncated_and_garbage() {
        let h = encode(ProxyVersion::V2, Some(addrs("[2001:db8::1]:1", "[::1]:2")));
        for i in 0..h.len() {
            assert_eq!(parse(&h[..i]).expect("prefix"), Parsed::Incomplete, "{i}");
        }
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
        let mut bad_cmd = h.clone();
        bad_cmd[12] = 0x2f;
        assert!(parse(&bad_cmd).is_err());
        let mut udp = h.clone();
        udp[13] = 0x22;
        assert!(parse(&udp).is_err());
        let mut short = h.clone();
        short[15] = 4; // claims 4 bytes of addresses for TCP6
        assert!(parse(&short[..20]).is_err());
        let mut huge = h.clone();
        huge[14] = 0xff;
        assert!(parse(&huge).is_err());
        // TLVs after the addresses are skipped.
        let mut tlv = h.clone();
        tlv[15] += 4;
        tlv.extend_from_slice(&[0x04, 0, 1, 0]);
        assert!(matches!(
            parse(&tlv).expect("ok"),
            Parsed::Done { len, .. } if len == tlv.len()
        ));
        // Arbitrary bytes never panic.
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let mut b = V2_SIG.to_vec();
            for _ in 0..(x % 64) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b.push((x >> 16) as u8);
            }
            let _ = parse(&b);
            let _ = parse(&b[12..]);
        }
    }
}
