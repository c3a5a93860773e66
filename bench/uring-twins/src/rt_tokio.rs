//! The epoll twin's I/O: tokio's `TcpStream` (current_thread runtime, epoll) behind the
//! owned-buffer `Stream` trait, and its accept loop.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{self, Net, Proxy, Stream};

pub struct Tokio;

impl Stream for TcpStream {
    async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // Into the spare capacity, not zeroed first (the proxy never reads into a full one).
        let res = self.read_buf(&mut buf).await;
        (res, buf)
    }

    async fn write_range(
        &mut self,
        buf: Vec<u8>,
        from: usize,
        to: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        let res = self.write_all(&buf[from..to]).await;
        (res, buf)
    }
}

impl Net for Tokio {
    type Stream = TcpStream;

    async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Runs the proxy on a current_thread runtime until the listener fails.
pub fn run(listen: SocketAddr, backends: Vec<SocketAddr>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        let proxy = Proxy::<Tokio>::new(backends);
        loop {
            let (s, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("epoll-twin: accept: {e}");
                    continue;
                }
            };
            if s.set_nodelay(true).is_err() {
                continue;
            }
            tokio::task::spawn_local(proxy::serve(proxy.clone(), s, peer));
        }
    })
}
