//! gRPC retries (`retry_on: [unavailable, ...]`): a call is sent again when its answer is
//! Trailers-Only (a status and nothing streamed back) with a listed `grpc-status`, or when
//! the pool's other `retry_on` items allow it after a reset or a timeout. A call's body is
//! a stream, so it is copied as it goes to the first backend (`Tee`, up to
//! `BUFFER_LIMIT`, Envoy's default per-request buffer); a call whose body had not ended
//! when its answer came, or outgrew the buffer, is not retried (`Replay::restore`).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};

use crate::config::RetryOn;
use crate::upstream::client_body::{ClientBody, ClientBodyError};
use crate::upstream::RequestBody;

/// The most of a call's body kept for a retry.
pub const BUFFER_LIMIT: usize = 64 * 1024;

/// A call's body, complete, once the copy of it is (shared by the `Tee` and the attempts).
#[derive(Debug, Clone, Default)]
pub struct Replay(Arc<OnceLock<Bytes>>);

impl Replay {
    /// The client's body, copied as it is sent.
    pub fn tee(&self, inner: ClientBody) -> Tee {
        Tee {
            inner,
            copy: Some(BytesMut::new()),
            done: self.0.clone(),
        }
    }

    /// A request to send again: one still carrying its body (never sent) as it is; a copy
    /// of the head (its body left behind) with the whole body, when it was copied
    /// complete; else `None` (nothing to resend).
    pub fn restore(&self, req: Option<Request<RequestBody>>) -> Option<Request<RequestBody>> {
        let mut req = req?;
        if !matches!(req.body(), RequestBody::Empty) {
            return Some(req);
        }
        let body = self.0.get()?.clone();
        *req.body_mut() = RequestBody::Full(Some(body));
        Some(req)
    }
}

/// The gRPC status of an answer that may be retried: Trailers-Only (`ended`: the stream
/// ended with its headers) with a `grpc-status` listed in `retry_on`.
pub fn retry_code(on: &RetryOn, headers: &HeaderMap, ended: bool) -> Option<u8> {
    if !ended || on.grpc.is_empty() {
        return None;
    }
    let code = super::grpc::status_in(headers)?;
    on.grpc.contains(&code).then_some(code)
}

/// A call's body on its way to the first backend, copied (up to `BUFFER_LIMIT`) for a
/// retry; the copy is published when the body ends.
#[derive(Debug)]
pub struct Tee {
    inner: ClientBody,
    /// `None`: not replayable (too large, or trailers).
    copy: Option<BytesMut>,
    done: Arc<OnceLock<Bytes>>,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => {
                    let fits = this
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() <= BUFFER_LIMIT);
                    match (fits, this.copy.as_mut()) {
                        (true, Some(c)) => c.extend_from_slice(data),
                        _ => this.copy = None,
                    }
                }
                None => this.copy = None,
            },
            Poll::Ready(None) => {
                if let Some(c) = this.copy.take() {
                    let _ = this.done.set(c.freeze());
                }
            }
            Poll::Ready(Some(Err(_))) => this.copy = None,
            Poll::Pending => {}
        }
        // An HTTP/2 sender may stop polling once the body says it is at its end.
        if this.inner.is_end_stream() {
            if let Some(c) = this.copy.take() {
                let _ = this.done.set(c.freeze());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_trailers_only_answers_with_a_listed_status_are_retried() {
        let on = RetryOn {
            grpc: vec![14],
            ..RetryOn::default()
        };
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(retry_code(&on, &h, true), Some(14));
        assert_eq!(retry_code(&on, &h, false), None, "something streamed");
        h.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(retry_code(&on, &h, true), None);
        assert_eq!(retry_code(&RetryOn::default(), &h, true), None);
    }

    #[test]
    fn a_copied_body_comes_back_with_the_head() {
        let replay = Replay::default();
        let head = || Request::new(RequestBody::Empty);
        assert!(replay.restore(Some(head())).is_none(), "not copied yet");
        let unsent = Request::new(RequestBody::Full(Some(Bytes::from_static(b"x"))));
        assert!(replay.restore(Some(unsent)).is_some(), "still has its body");
        let _ = replay.0.set(Bytes::from_static(b"body"));
        let again = replay.restore(Some(head())).expect("copied");
        match again.body() {
            RequestBody::Full(Some(b)) => assert_eq!(&b[..], b"body"),
            other => panic!("{other:?}"),
        }
    }
}
