//! Moving bytes both ways between a client and a backend: one 16 KiB buffer per direction
//! (one userspace copy, like `tokio::io::copy_bidirectional`), counted as they move, with
//! half-close (EOF one way shuts down that way's write side, the other way goes on) and an
//! idle timeout over both directions.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
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
enum Side {
    Read(io::Error),
    Write(io::Error),
}

/// Copy `r` to `w` until EOF, then shut `w` down (half-close).
async fn one_way<R, W>(
    mut r: R,
    mut w: W,
    meters: &[&AtomicU64],
    activity: &Activity,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    }
}

/// Proxy between `client` and `backend` until both directions ended, one failed, or
/// nothing moved for `idle`.
pub async fn pump(
    mut client: TcpStream,
    mut backend: TcpStream,
    idle: Duration,
    meters: Meters<'_>,
) -> Result<(), PumpError> {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (cr, cw) = client.split();
    let (br, bw) = backend.split();
    let up = one_way(cr, bw, meters.upstream, &activity);
    let down = one_way(br, cw, meters.downstream, &activity);
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
