//! Whether another process listens on an address. autolb binds one SO_REUSEPORT socket per
//! worker, and the kernel lets any process of the same user join such a group silently
//! (it then splits the connections between the two). So before binding, and again once
//! its own sockets listen, autolb looks for listening sockets on an overlapping address in
//! the kernel's socket table (`/proc/net/tcp`, `/proc/net/tcp6`) that are not among its own
//! descriptors (`/proc/self/fd`). The second look closes the race of two processes binding
//! at once: whichever of them listens second sees the other and backs off (if both look
//! after both listen, both back off; neither ever shares silently).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP_LISTEN in `/proc/net/tcp`'s `st` column.
const LISTEN: &str = "0A";

/// A listening socket of another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// Listening sockets on an address overlapping `addr` (same port and family; the same IP,
/// or either side the wildcard) that this process does not hold. An unreadable socket
/// table (no /proc) is an error: the caller decides.
pub(crate) fn foreign_listeners(addr: SocketAddr) -> io::Result<Vec<Foreign>> {
    let table = match addr {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table)?;
    let own = own_sockets()?;
    Ok(listening(&text)
        .filter(|f| overlaps(addr, f.addr) && !own.contains(&f.inode))
        .collect())
}

/// The inodes of this process's sockets.
fn own_sockets() -> io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        if let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|t| socket_inode(&t.to_string_lossy()))
        {
            out.insert(inode);
        }
    }
    Ok(out)
}

/// `socket:[1234]` -> 1234.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The listening sockets of a `/proc/net/tcp{,6}` table.
fn listening(table: &str) -> impl Iterator<Item = Foreign> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&LISTEN) {
            return None;
        }
        Some(Foreign {
            addr: parse_addr(fields.get(1)?)?,
            inode: fields.get(9)?.parse().ok()?,
        })
    })
}

/// `0100007F:1F90` (the kernel prints each 32-bit word of the address as a native-endian
/// number, the port as a number) -> 127.0.0.1:8080.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a listener on `theirs` takes connections meant for `ours`: same port and
/// family, and the same IP or a wildcard on either side.
fn overlaps(ours: SocketAddr, theirs: SocketAddr) -> bool {
    ours.port() == theirs.port()
        && ours.is_ipv4() == theirs.is_ipv4()
        && (ours.ip() == theirs.ip() || ours.ip().is_unspecified() || theirs.ip().is_unspecified())
}

/// The process holding socket `inode`: its pid and program name (a scan of /proc, made
/// only to word an error).
pub(crate) fn holder(inode: u64) -> Option<(u32, String)> {
    let want = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let found = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()));
        if found {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            return Some((pid, comm));
        }
    }
    None
}

/// The error for an address another process listens on, naming the port and, when it can
/// be found, that process.
pub(crate) fn in_use(addr: SocketAddr, foreign: &[Foreign]) -> io::Error {
    let who = foreign
        .iter()
        .find_map(|f| holder(f.inode))
        .map(|(pid, comm)| format!(" (pid {pid}, {comm})"))
        .unwrap_or_default();
    let theirs = foreign.first().map_or(addr, |f| f.addr);
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "port {} is in use: another process{who} listens on {theirs}. Two processes on one \
             port would split its connections; stop the other one, replace it with \
             `autolb run --upgrade`, or set `reuse_port: true` on this listener to share the \
             port on purpose",
            addr.port()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_table_is_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0000000000000000 100 0 0 10 0
";
        let found: Vec<Foreign> = listening(table).collect();
        let lo: SocketAddr = if cfg!(target_endian = "little") {
            "127.0.0.1:8080".parse().expect("addr")
        } else {
            "1.0.0.127:8080".parse().expect("addr")
        };
        assert_eq!(
            found,
            vec![
                Foreign {
                    addr: lo,
                    inode: 4242
                },
                Foreign {
                    addr: "0.0.0.0:80".parse().expect("addr"),
                    inode: 4244
                },
            ]
        );
    }

    #[test]
    fn ipv6_addresses_are_read() {
        let a = parse_addr("00000000000000000000000001000000:1F90").expect("v6");
        if cfg!(target_endian = "little") {
            assert_eq!(a, "[::1]:8080".parse::<SocketAddr>().expect("addr"));
        }
        assert_eq!(
            parse_addr("00000000000000000000000000000000:0050"),
            Some("[::]:80".parse().expect("addr"))
        );
    }

    #[test]
    fn wildcards_overlap_every_address_of_their_family() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("10.1.2.3:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("0.0.0.0:80"), a("[::]:80")));
    }

    #[test]
    fn a_listener_of_this_process_is_not_foreign() {
        let ours = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = ours.local_addr().expect("addr");
        assert_eq!(foreign_listeners(addr).expect("table"), vec![]);
    }
}
