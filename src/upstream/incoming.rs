//! A backend's response body as the client that read its head hands it over (hyper's or
//! the own HTTP/1.1 client's), and `BodyError`, why a response body stopped early.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{RawBody, RawConn, RawError};

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Backend(#[from] hyper::Error),
    #[error(transparent)]
    Raw(#[from] RawError),
    #[error("backend sent nothing for {0:?} in the middle of a response")]
    Idle(Duration),
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
}

/// A backend's response body as the client that read its head gives it: hyper's, or the
/// own HTTP/1.1 client's.
#[derive(Debug)]
pub enum UpstreamIncoming {
    Hyper(Incoming),
    Raw(RawBody),
}

impl UpstreamIncoming {
    /// The body's first frame when it is at hand without waiting (it came with the head):
    /// `Some(Err)` when the body is broken from its start. Never waits, and reads nothing
    /// from a backend socket the head left no body bytes of.
    pub fn first_frame(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        if self.is_end_stream() {
            return None;
        }
        if let UpstreamIncoming::Raw(b) = self {
            if !b.has_buffered() {
                return None;
            }
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_frame(&mut cx) {
            Poll::Ready(Some(r)) => Some(r),
            _ => None,
        }
    }

    /// The own client's connection, when the body was read to its end and it is reusable.
    pub fn take_reusable(&mut self) -> Option<RawConn> {
        match self {
            UpstreamIncoming::Raw(body) => body.take_reusable(),
            UpstreamIncoming::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamIncoming::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            UpstreamIncoming::Raw(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Hyper(b) => b.is_end_stream(),
            UpstreamIncoming::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::Hyper(b) => b.size_hint(),
            UpstreamIncoming::Raw(b) => b.size_hint(),
        }
    }
}
