//! Zero-downtime restart (`autolb run --upgrade`): the running autolb hands its listening
//! sockets (every SO_REUSEPORT socket of every listener, and the admin socket) to the new
//! process over a Unix socket with SCM_RIGHTS. The kernel sockets never close, so no
//! connection is refused: the new process accepts on them, says READY once its pools can
//! serve, and the old one stops accepting and drains.
//!
//! The descriptors travel in `sendmsg`/`recvmsg` control messages (rustix's safe API),
//! checked for truncation.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// At most this many descriptors in one hand-over (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;
const ADMIN: &str = "__admin";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upgrade protocol: {0}")]
    Protocol(String),
    #[error("too many sockets to hand over ({0} > {MAX_FDS})")]
    TooMany(usize),
}

/// The sockets of a running autolb, by listener name (`__admin` for the admin port).
#[derive(Default)]
pub struct Sockets {
    pub listeners: BTreeMap<String, Vec<std::net::TcpListener>>,
    pub admin: Option<std::net::TcpListener>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    /// (name, address, how many sockets), in the order of the descriptors.
    entries: Vec<(String, SocketAddr, usize)>,
}

/// Where a running autolb waits for its successor by default (`--upgrade-socket` and
/// `AUTOLB_UPGRADE_SOCKET` override it): one path per config path, made absolute but with
/// its symlinks kept (a deploy that moves `current -> releases/N`, or a ConfigMap's `..data`
/// swap, between the start and the upgrade still names the same socket), in the first
/// directory of `RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, shared by every process
/// of the unit), else in the temp directory.
pub fn socket_path(config: &Path) -> PathBuf {
    let abs = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_64(abs.as_os_str().as_encoded_bytes());
    let runtime = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|d| d.is_dir());
    runtime
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("autolb-{:08x}.sock", hash as u32))
}

fn send_fds(stream: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let n = sendmsg(
        stream,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::empty(),
    )?;
    if n != data.len() {
        return Err(std::io::Error::other("short sendmsg"));
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream, max_fds: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // MSG_CMSG_CLOEXEC keeps the descriptors from leaking into instances autolb starts.
    let msg = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if msg
        .flags
        .intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC)
    {
        return Err(std::io::Error::other("hand-over message truncated"));
    }
    data.truncate(msg.bytes);
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok((data, fds))
}

/// Old side: wait for a successor on `path`; hand it `sockets`; return once it said READY
/// (the caller then stops accepting and drains). Runs on a blocking thread.
pub fn hand_over(
    path: &Path,
    sockets: &dyn Fn() -> Sockets,
    ready_timeout: Duration,
) -> Result<(), UpgradeError> {
    let sock_err = |source| UpgradeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    tracing::info!(path = %path.display(), "upgrade: a successor can take over (autolb run --upgrade)");
    loop {
        let (stream, _) = listener.accept().map_err(sock_err)?;
        match serve_successor(&stream, &sockets(), ready_timeout) {
            Ok(()) => return Ok(()),
            // A failed successor: keep running and wait for the next one.
            Err(e) => tracing::error!(error = %e, "upgrade failed; still serving"),
        }
    }
}

fn serve_successor(
    stream: &UnixStream,
    sockets: &Sockets,
    ready_timeout: Duration,
) -> Result<(), UpgradeError> {
    let proto = |e: std::io::Error| UpgradeError::Protocol(e.to_string());
    let mut reader = BufReader::new(stream.try_clone().map_err(proto)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(proto)?;
    if line.trim() != "UPGRADE" {
        return Err(UpgradeError::Protocol(format!(
            "expected UPGRADE, got {line:?}"
        )));
    }
    let mut entries = Vec::new();
    let mut fds = Vec::new();
    for (name, list) in &sockets.listeners {
        if let Some(addr) = list.first().and_then(|l| l.local_addr().ok()) {
            entries.push((name.clone(), addr, list.len()));
            fds.extend(list.iter().map(|l| l.as_fd()));
        }
    }
    if let Some(admin) = &sockets.admin {
        if let Ok(addr) = admin.local_addr() {
            entries.push((ADMIN.to_string(), addr, 1));
            fds.push(admin.as_fd());
        }
    }
    if fds.len() > MAX_FDS {
        return Err(UpgradeError::TooMany(fds.len()));
    }
    let manifest = serde_json::to_vec(&Manifest { entries })
        .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    send_fds(stream, &manifest, &fds).map_err(proto)?;
    tracing::info!(
        sockets = fds.len(),
        "upgrade: sockets handed to the new process"
    );
    stream
        .set_read_timeout(Some(ready_timeout))
        .map_err(proto)?;
    line.clear();
    reader.read_line(&mut line).map_err(proto)?;
    if line.trim() != "READY" {
        return Err(UpgradeError::Protocol(format!(
            "expected READY, got {line:?}"
        )));
    }
    Ok(())
}

/// New side: take over the sockets of the autolb serving `config`.
pub fn take_over(path: &Path) -> Result<(Sockets, UnixStream), UpgradeError> {
    let proto = |e: std::io::Error| UpgradeError::Protocol(e.to_string());
    let mut stream = UnixStream::connect(path).map_err(|source| UpgradeError::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    stream.write_all(b"UPGRADE\n").map_err(proto)?;
    let (data, fds) = recv_fds(&stream, MAX_FDS).map_err(proto)?;
    let manifest: Manifest =
        serde_json::from_slice(&data).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    let wanted: usize = manifest.entries.iter().map(|e| e.2).sum();
    if wanted != fds.len() {
        return Err(UpgradeError::Protocol(format!(
            "expected {wanted} sockets, got {}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut sockets = Sockets::default();
    for (name, _, count) in manifest.entries {
        let list: Vec<std::net::TcpListener> = fds
            .by_ref()
            .take(count)
            .map(std::net::TcpListener::from)
            .collect();
        for l in &list {
            l.set_nonblocking(true).map_err(proto)?;
        }
        if name == ADMIN {
            sockets.admin = list.into_iter().next();
        } else {
            sockets.listeners.insert(name, list);
        }
    }
    Ok((sockets, stream))
}

/// New side: tell the old process to stop accepting and drain.
pub fn ready(mut stream: UnixStream) -> std::io::Result<()> {
    stream.write_all(b"READY\n")
}
