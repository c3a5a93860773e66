//! A client TCP socket registered with tokio's reactor only once a read or a write would
//! block. A new connection whose request is already there when it is first read (the usual
//! case: the accept loop takes a batch of connections before their tasks run) is read,
//! answered and closed with plain non-blocking calls: no `epoll_ctl` adds it, none removes
//! it. HAProxy does the same, and a one-request connection cost autolb two `epoll_ctl` more
//! than it (bench/NOTES.md). Parked connections come back the same way (`conn::park`).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client socket, out of tokio's reactor until it has to wait.
pub(crate) enum LazyTcp {
    /// Every call so far completed: not registered (non-blocking, as accepted); whether a
    /// read that found nothing was tried again.
    Fresh(std::net::TcpStream, bool),
    /// A call would have blocked: registered, and waited on as any tokio stream.
    Registered(TcpStream),
    /// Registration failed: the socket is closed.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket closed")
}

impl LazyTcp {
    /// An accepted, non-blocking socket, not yet registered.
    pub(crate) fn fresh(stream: std::net::TcpStream) -> LazyTcp {
        LazyTcp::Fresh(stream, false)
    }

    /// The socket as a tokio stream, registering it now if it was not.
    pub(crate) fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self, LazyTcp::Fresh(..)) {
            if let LazyTcp::Fresh(s, _) = std::mem::replace(self, LazyTcp::Gone) {
                *self = LazyTcp::Registered(TcpStream::from_std(s)?);
            }
        }
        match self {
            LazyTcp::Registered(t) => Ok(t),
            _ => Err(gone()),
        }
    }

    /// The socket out of the reactor (removed from it if it was registered).
    pub(crate) fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            LazyTcp::Fresh(s, _) => Ok(s),
            LazyTcp::Registered(t) => t.into_std(),
            LazyTcp::Gone => Err(gone()),
        }
    }

    /// The socket as a tokio stream, registered now if it was not.
    pub(crate) fn into_tokio(self) -> io::Result<TcpStream> {
        match self {
            LazyTcp::Fresh(s, _) => TcpStream::from_std(s),
            LazyTcp::Registered(t) => Ok(t),
            LazyTcp::Gone => Err(gone()),
        }
    }

    /// The registered stream, if it is.
    pub(crate) fn tokio(&self) -> Option<&TcpStream> {
        match self {
            LazyTcp::Registered(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            LazyTcp::Fresh(s, _) => s.set_nodelay(on),
            LazyTcp::Registered(t) => t.set_nodelay(on),
            LazyTcp::Gone => Err(gone()),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            LazyTcp::Fresh(s, _) => s.local_addr(),
            LazyTcp::Registered(t) => t.local_addr(),
            LazyTcp::Gone => Err(gone()),
        }
    }

    /// `op` on the fresh socket; `None` when it would block (the caller then registers).
    fn try_fresh<R>(
        &self,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<R>,
    ) -> Option<io::Result<R>> {
        let LazyTcp::Fresh(s, _) = self else {
            return None;
        };
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                other => return Some(other),
            }
        }
    }
}

impl crate::proxy_proto::client_addrs::ClientSocket for LazyTcp {
    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        LazyTcp::local_addr(self)
    }

    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        LazyTcp::registered(self)
    }
}

impl AsyncRead for LazyTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let LazyTcp::Fresh(_, retried) = this {
            let retried = std::mem::replace(retried, true);
            // `Framed` reads into an initialised buffer: nothing is zeroed here for it.
            let dst = buf.initialize_unfilled();
            match this.try_fresh(|mut s| s.read(dst)) {
                Some(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // Nothing yet: the client's request is often on its way (it sends once its
                // connect completed, as the accept loop took the connection). Read once
                // more after the worker's other ready tasks ran, before registering.
                None if !retried => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                None => {}
            }
        }
        match this.registered() {
            Ok(t) => Pin::new(t).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LazyTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.try_fresh(|mut s| s.write(buf)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(t) => Pin::new(t).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.try_fresh(|mut s| s.write_vectored(bufs)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyTcp::Registered(t) => Pin::new(t).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyTcp::Fresh(s, _) => Poll::Ready(s.shutdown(Shutdown::Write)),
            LazyTcp::Registered(t) => Pin::new(t).poll_shutdown(cx),
            LazyTcp::Gone => Poll::Ready(Err(gone())),
        }
    }
}
