//! Zero-copy forwarding for L4: one direction of a proxied connection moved with `splice(2)`
//! (socket -> pipe -> socket, the bytes never enter userspace), driven by tokio's readiness.
//! Linux only, like the rest of autolb; `pump` falls back to its userspace copy when a pipe
//! cannot be made or the kernel refuses to splice these sockets.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pump::{Activity, Side};

/// The most asked of one `splice` into the pipe: a default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// The most empty pipes a worker keeps for its next connections.
const POOL_MAX: usize = 64;

thread_local! {
    /// This worker's empty pipes: a short connection reuses two instead of paying two
    /// `pipe2` and four `close`. Only a pipe known empty comes back (`Pipe::give_back`).
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe carrying one direction of one connection; both ends non-blocking.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// An empty pipe from this worker's pool, else a new one, or why not (out of
    /// descriptors: the caller copies instead).
    pub(super) fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.with_borrow_mut(Vec::pop) {
            return Ok(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }

    /// Back to this worker's pool (closed if it is full). Only for a pipe that holds no
    /// byte: `one_way` gives its pipe back when it ended at EOF, every fill drained.
    fn give_back(self) {
        POOL.with_borrow_mut(|pool| {
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        });
    }
}

/// How a spliced direction ended.
pub(super) enum Spliced {
    /// `from` reached EOF and every byte read was written to `to` (the pipe went back to
    /// the pool, empty).
    Eof,
    /// The kernel cannot splice these descriptors; nothing was moved: copy instead.
    Unsupported,
}

/// The errors that say `splice` does not apply to these descriptors (not that the
/// connection failed): an old kernel, a seccomp filter, a socket type it cannot splice.
fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM
    )
}

/// Move `from`'s bytes to `to` through `pipe` until `from`'s EOF, counting them in
/// `meters` once written. The pipe is empty whenever a fill starts (each fill is drained
/// before the next), so a would-block while filling is the socket's, never the pipe's; and
/// at EOF it is empty, so it goes back to the pool. On an error it is closed with whatever
/// it holds (never handed to another connection).
pub(super) async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    meters: &[&AtomicU64],
    activity: &Activity,
) -> Result<Spliced, Side> {
    let mut moved_any = false;
    loop {
        let n = loop {
            from.readable().await.map_err(Side::Read)?;
            let fill = from.try_io(Interest::READABLE, || {
                splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    CHUNK,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
                .map_err(io::Error::from)
            });
            match fill {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if !moved_any && Errno::from_io_error(&e).is_some_and(unsupported) => {
                    return Ok(Spliced::Unsupported)
                }
                Err(e) => return Err(Side::Read(e)),
            }
        };
        if n == 0 {
            pipe.give_back();
            return Ok(Spliced::Eof);
        }
        moved_any = true;
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(Side::Write)?;
            let drain = to.try_io(Interest::WRITABLE, || {
                splice(
                    &pipe.read,
                    None,
                    to,
                    None,
                    left,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
                .map_err(io::Error::from)
            });
            match drain {
                // A pipe holding bytes never gives 0; if it did, the loop must not spin.
                Ok(0) => return Err(Side::Write(io::ErrorKind::WriteZero.into())),
                Ok(m) => left = left.saturating_sub(m),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Side::Write(e)),
            }
        }
        activity.touch();
        for m in meters {
            m.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}
