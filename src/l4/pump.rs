//! Moving bytes both ways between a client and a backend, counted as they move, with
//! half-close (EOF one way shuts down that way's write side, the other way goes on) and an
//! idle timeout over both directions. Each direction starts with a 16 KiB buffer (one
//! userspace copy, like `tokio::io::copy_bidirectional`); once a read fills it, it goes on
//! through a pipe with `splice(2)` (`splice.rs`: the bytes stay in the kernel), unless no
//! pipe can be had, the kernel refuses, or `AUTOLB_L4_SPLICE=off`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::splice::{self, Pipe, Spliced};

const BUF: usize = 16 * 1024;

/// Why a proxied connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("backend side: {0}")]
    Backend(io::Error),
    #[error("no bytes either way for {0:?}")]
    Idle(Duration),
}

/// Where the bytes of each direction are counted.
pub struct Meters<'a> {
    /// Client -> backend.
    pub upstream: &'a [&'a AtomicU64],
    /// Backend -> client.
    pub downstream: &'a [&'a AtomicU64],
}

/// Last activity, in milliseconds since `base`.
pub(super) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn touch(&self) {
        crate::sched::cpu_share::note_work();
        let ms = self.base.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) {
        // Each round sleeps until the current deadline: bounded by the connection's life.
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.base + Duration::from_millis(last) + idle).await;
            if self.last_ms.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

/// Which side failed: reading from `from` or writing to `to`.
pub(super) enum Side {
    Read(io::Error),
    Write(io::Error),
}

/// Move `r`'s bytes to `w` until EOF, then shut `w` down (half-close). Copied until a
/// read fills the buffer (more is waiting: a bulk transfer), then, with `splice` on,
/// through a pipe of this worker's pool: a short exchange never costs a pipe.
async fn one_way(
    mut r: ReadHalf<'_>,
    mut w: WriteHalf<'_>,
    mut splice: bool,
    meters: &[&AtomicU64],
    activity: &Activity,
) -> Result<(), Side> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await.map_err(Side::Read)?;
        if n == 0 {
            // A failed shutdown means that peer is gone: the other direction notices itself.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(Side::Write)?;
        activity.touch();
        for m in meters {
            m.fetch_add(n as u64, Ordering::Relaxed);
        }
        if !(splice && n == BUF) {
            continue;
        }
        // Out of descriptors for a pipe, or a kernel that will not splice these sockets:
        // this direction goes on copying.
        splice = false;
        let Ok(pipe) = Pipe::take() else {
            continue;
        };
        match splice::one_way(r.as_ref(), w.as_ref(), pipe, meters, activity).await? {
            Spliced::Eof => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Spliced::Unsupported => {}
        }
    }
}

/// Proxy between `client` and `backend` until both directions ended, one failed, or
/// nothing moved for `idle`; `use_splice`: through pipes where the kernel allows.
pub async fn pump(
    mut client: TcpStream,
    mut backend: TcpStream,
    idle: Duration,
    meters: Meters<'_>,
    use_splice: bool,
) -> Result<(), PumpError> {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (cr, cw) = client.split();
    let (br, bw) = backend.split();
    let up = one_way(cr, bw, use_splice, meters.upstream, &activity);
    let down = one_way(br, cw, use_splice, meters.downstream, &activity);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    // Each round ends one direction (or everything): at most three rounds.
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(Side::Read(e)) => return Err(PumpError::Client(e)),
                Err(Side::Write(e)) => return Err(PumpError::Backend(e)),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(Side::Read(e)) => return Err(PumpError::Backend(e)),
                Err(Side::Write(e)) => return Err(PumpError::Client(e)),
            },
            _ = activity.idle(idle) => return Err(PumpError::Idle(idle)),
        }
    }
    Ok(())
}
