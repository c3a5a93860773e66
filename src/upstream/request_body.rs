//! The request body sent to a backend: the client's, streamed; none; a small one autolb
//! wrote; or a client body transformed on the way (a gRPC call's copy for a retry, a
//! gRPC-Web text body decoded), boxed: those are rare, and the transport does not need to
//! know them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::client_body::{ClientBody, ClientBodyError};

/// A client body transformed on its way to the backend.
pub type Transformed = Pin<Box<dyn Body<Data = Bytes, Error = ClientBodyError> + Send>>;

/// A request body sent to a backend: the client's, streamed, or none (a resent request whose
/// original had no body).
pub enum RequestBody {
    Client(ClientBody),
    Empty,
    /// A small body autolb wrote (a gRPC health check's call, a retried call's copy).
    Full(Option<Bytes>),
    /// The client's body transformed: copied for a retry (`proxy::grpc_retry`), or a
    /// gRPC-Web text body decoded from base64 (`proxy::grpc_web`).
    Transformed(Transformed),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Client(b) => f.debug_tuple("Client").field(b).finish(),
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Full(b) => f.debug_tuple("Full").field(b).finish(),
            RequestBody::Transformed(_) => f.write_str("Transformed"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Transformed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Transformed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Transformed(b) => b.size_hint(),
        }
    }
}
