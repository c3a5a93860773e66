//! The io_uring twin's I/O: monoio's `TcpStream` on its io_uring driver (no epoll fallback:
//! the runtime fails to build if io_uring is unavailable) behind the owned-buffer `Stream`
//! trait, and its accept loop.

use std::io;
use std::net::SocketAddr;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::proxy::{self, Net, Proxy, Stream};

pub struct Monoio;

impl Stream for TcpStream {
    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let (len, cap) = (buf.len(), buf.capacity());
        // Reads into buf[len..cap]; the slice's set_init grows the Vec's length.
        let (res, slice) = self.read(buf.slice_mut(len..cap)).await;
        (res, slice.into_inner())
    }

    async fn write_range(
        &mut self,
        buf: Vec<u8>,
        from: usize,
        to: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        let (res, slice) = self.write_all(buf.slice(from..to)).await;
        (res.map(|_| ()), slice.into_inner())
    }
}

impl Net for Monoio {
    type Stream = TcpStream;

    async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect_addr(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Submission queue entries of the ring (monoio's default is 1024).
const ENTRIES: u32 = 1024;

/// The ring's setup flags from `URING_TWIN_RING`: unset or `default` (monoio's: none),
/// `coop` (IORING_SETUP_COOP_TASKRUN | SINGLE_ISSUER: completions are not pushed to the
/// thread with an interrupt, it picks them up at its next syscall) or `defer` (coop +
/// DEFER_TASKRUN: completion work runs only when the thread waits for completions).
fn ring_builder() -> io::Result<io_uring::Builder> {
    let mut b = io_uring::IoUring::builder();
    match std::env::var("URING_TWIN_RING").as_deref() {
        Err(_) | Ok("default") => {}
        Ok("coop") => {
            b.setup_coop_taskrun().setup_single_issuer();
        }
        Ok("defer") => {
            b.setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun();
        }
        Ok(other) => {
            return Err(io::Error::other(format!(
                "URING_TWIN_RING={other}: expected default, coop or defer"
            )))
        }
    }
    Ok(b)
}

/// Runs the proxy on monoio's io_uring runtime until the listener fails.
pub fn run(listen: SocketAddr, backends: Vec<SocketAddr>) -> io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(ENTRIES)
        .uring_builder(ring_builder()?)
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)?;
        let proxy = Proxy::<Monoio>::new(backends);
        loop {
            let (s, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("uring-twin: accept: {e}");
                    continue;
                }
            };
            if s.set_nodelay(true).is_err() {
                continue;
            }
            monoio::spawn(proxy::serve(proxy.clone(), s, peer));
        }
    })
}
