//! A request body as the client sends it: hyper's (HTTP/1.1, HTTP/2) or an HTTP/3 request
//! stream's (`H3Body`). The proxy takes either (`Request<Downstream>`), so that every
//! protocol goes through the same request path.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::client_body::ClientBodyError;

/// The receiving half of an HTTP/3 request stream.
pub type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A client's request body.
#[derive(Debug)]
pub enum Downstream {
    /// HTTP/1.1 or HTTP/2, read by hyper.
    Hyper(Incoming),
    /// HTTP/3, read from its QUIC stream.
    H3(Box<H3Body>),
}

impl From<Incoming> for Downstream {
    fn from(b: Incoming) -> Self {
        Downstream::Hyper(b)
    }
}

impl Body for Downstream {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            Downstream::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
            Downstream::H3(b) => b.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Downstream::Hyper(b) => b.is_end_stream(),
            Downstream::H3(b) => b.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Downstream::Hyper(b) => b.size_hint(),
            Downstream::H3(b) => b.size,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

/// An HTTP/3 request's body: DATA frames, then trailers, read from its stream.
pub struct H3Body {
    stream: Option<H3Recv>,
    /// Read ahead by `H3Body::start`.
    first: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    state: State,
    size: SizeHint,
}

impl std::fmt::Debug for H3Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Body")
            .field("state", &self.state)
            .finish()
    }
}

/// The client did not send the start of its body (or its end) in time.
#[derive(Debug)]
pub enum StartError {
    Timeout,
    Stream(h3::error::StreamError),
}

impl H3Body {
    /// The body of a request that declared `content_length` (if it did). A request without
    /// a positive Content-Length has its first DATA frame (or its end) read here, within
    /// `wait`: a request with no body must reach the backend as one (HTTP/1.1 backends
    /// would otherwise get a chunked body on every GET).
    pub async fn start(
        mut stream: H3Recv,
        content_length: Option<u64>,
        wait: Duration,
    ) -> Result<H3Body, StartError> {
        let size = match content_length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        };
        let mut body = H3Body {
            stream: None,
            first: None,
            trailers: None,
            state: State::Data,
            size,
        };
        if content_length.is_some_and(|n| n > 0) {
            body.stream = Some(stream);
            return Ok(body);
        }
        let peek = async {
            match stream.recv_data().await? {
                Some(mut data) => Ok(Some(data.copy_to_bytes(data.remaining()))),
                None => stream.recv_trailers().await.map(|t| {
                    body.trailers = t;
                    None
                }),
            }
        };
        match tokio::time::timeout(wait, peek).await {
            Err(_) => return Err(StartError::Timeout),
            Ok(Err(e)) => return Err(StartError::Stream(e)),
            Ok(Ok(Some(first))) => body.first = Some(first),
            Ok(Ok(None)) => {
                body.state = if body.trailers.is_some() {
                    State::Trailers
                } else {
                    State::Done
                }
            }
        }
        if body.state != State::Done {
            body.stream = Some(stream);
        }
        Ok(body)
    }

    fn is_end(&self) -> bool {
        self.first.is_none() && self.state == State::Done
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(stream) = self.stream.as_mut() else {
            self.state = State::Done;
            return Poll::Ready(None);
        };
        if self.state == State::Data {
            match stream.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(mut data))) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(Ok(None)) => self.state = State::Trailers,
                Poll::Ready(Err(e)) => {
                    self.state = State::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        if self.state == State::Trailers {
            if let Some(t) = self.trailers.take() {
                self.state = State::Done;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            let polled = stream.poll_recv_trailers(cx);
            let Poll::Ready(result) = polled else {
                return Poll::Pending;
            };
            self.state = State::Done;
            return match result {
                Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e.into()))),
            };
        }
        Poll::Ready(None)
    }
}
