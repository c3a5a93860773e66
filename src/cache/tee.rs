//! The body of a response being stored: streamed to the client as it arrives and copied
//! (up to `max_object`) into the store once complete. A body that is cut off, fails, or
//! grows past `max_object` is not stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::flight::Flight;
use super::key::Primary;
use super::policy::Meta;

/// What becomes the stored object when the body ends.
#[derive(Debug)]
pub(crate) struct Fill {
    pub cache: Arc<super::Cache>,
    pub primary: Primary,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub meta: Meta,
    /// The request's fields (for the response's `Vary`).
    pub request: HeaderMap,
    pub body: BytesMut,
    /// Released (waking waiters) after the store, or when the fill is abandoned.
    pub flight: Option<Flight>,
}

impl Fill {
    fn finish(mut self) {
        let body = std::mem::take(&mut self.body).freeze();
        let object =
            super::store::object(self.status, self.headers, body, self.meta, &self.request);
        self.cache.store.insert(&self.primary, Arc::new(object));
        drop(self.flight.take());
    }
}

pin_project_lite::pin_project! {
    /// `inner`, copied into the store when it ends.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        fill: Option<Box<Fill>>,
    }
}

impl<B> Tee<B> {
    pub(crate) fn new(inner: B, fill: Fill) -> Tee<B> {
        Tee {
            inner,
            fill: Some(Box::new(fill)),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let over = this.fill.as_ref().is_some_and(|f| {
                        f.body.len() + data.len() > f.cache.settings.max_object as usize
                    });
                    if over {
                        *this.fill = None;
                    } else if let Some(f) = this.fill.as_mut() {
                        f.body.extend_from_slice(data);
                    }
                }
                // The server may stop polling once the body says it has ended.
                if inner.is_end_stream() {
                    if let Some(f) = this.fill.take() {
                        f.finish();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => *this.fill = None,
            Poll::Ready(None) => {
                if let Some(f) = this.fill.take() {
                    f.finish();
                }
            }
            Poll::Pending => {}
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

/// Read `body` to its end (a background refresh: nobody else reads it), at most `bound`.
pub async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B, bound: std::time::Duration) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(bound, async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
}
