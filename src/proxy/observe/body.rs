//! A response body observed on its way to the client: compressed as it streams (flushed
//! whenever the backend makes us wait, so that streamed events are not held back), its
//! bytes counted, and its access log line handed over when it ends, fails or is dropped.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::Pending;
use crate::compress::encoder::Encoder;
use crate::proxy::body::ProxyBody;
use crate::upstream::BodyError;

pub struct ObservedBody {
    inner: ProxyBody,
    encoder: Option<Encoder>,
    /// Input written to the encoder since it last produced output.
    dirty: bool,
    /// The inner body ended (its trailers, if any, wait in `trailers`).
    ended: bool,
    trailers: Option<HeaderMap>,
    bytes: u64,
    log: Option<Box<Pending>>,
}

impl ObservedBody {
    pub(super) fn new(
        inner: ProxyBody,
        encoder: Option<Encoder>,
        log: Option<Box<Pending>>,
    ) -> ObservedBody {
        ObservedBody {
            inner,
            encoder,
            dirty: false,
            ended: false,
            trailers: None,
            bytes: 0,
            log,
        }
    }

    /// Hand the log line over (once); `abort` says why the body did not go out whole.
    fn settle(&mut self, abort: Option<&'static str>) {
        if let Some(log) = self.log.take() {
            let Pending {
                mut entry,
                started,
                request_bytes,
            } = *log;
            entry.duration = started.elapsed();
            entry.bytes = self.bytes;
            entry.complete = abort.is_none();
            entry.abort = abort;
            entry.request_bytes = request_bytes.map_or(0, |b| b.0.load(Ordering::Relaxed));
            // The queue is the runtime's, reached through the entry's snapshot.
            entry.snapshot.access_log.clone().submit(entry);
        }
    }

    fn data(&mut self, out: Bytes) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.bytes += out.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(out))))
    }

    fn failed(&mut self, e: std::io::Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        tracing::warn!(error = %e, "compression failed: response aborted");
        self.encoder = None;
        self.settle(Some("compression"));
        Poll::Ready(Some(Err(BodyError::Compress(e))))
    }
}

/// The access log's `abort` for a response body that failed on the way.
fn abort_reason(e: &BodyError) -> &'static str {
    match e {
        BodyError::Idle(_) => "backend_timeout",
        BodyError::Compress(_) => "compression",
        BodyError::Backend(_) | BodyError::Raw(_) => "backend_closed",
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Dropped before its end was read: complete only if nothing was left.
        let complete =
            self.encoder.is_none() && self.trailers.is_none() && self.inner.is_end_stream();
        self.settle((!complete).then_some("client_closed"));
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                if let Some(enc) = this.encoder.take() {
                    match enc.finish() {
                        Ok(out) if !out.is_empty() => return this.data(out),
                        Ok(_) => {}
                        Err(e) => return this.failed(e),
                    }
                }
                if let Some(t) = this.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                this.settle(None);
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    this.settle(Some(abort_reason(&e)));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    continue;
                }
                Poll::Pending => {
                    // The backend makes us wait: send what was compressed so far.
                    if let Some(enc) = this.encoder.as_mut().filter(|_| this.dirty) {
                        this.dirty = false;
                        if let Err(e) = enc.flush() {
                            return this.failed(e);
                        }
                        let out = enc.take();
                        if !out.is_empty() {
                            return this.data(out);
                        }
                    }
                    return Poll::Pending;
                }
            };
            if let (Some(t), Some(log)) = (frame.trailers_ref(), this.log.as_mut()) {
                // A gRPC call's status comes in its trailers.
                if let Some(code) = crate::proxy::grpc::status_in(t) {
                    log.entry.grpc_status = Some(code);
                }
            }
            let Some(enc) = this.encoder.as_mut() else {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                return Poll::Ready(Some(Ok(frame)));
            };
            match frame.into_data() {
                Ok(data) => {
                    if let Err(e) = enc.write(&data) {
                        return this.failed(e);
                    }
                    this.dirty = true;
                    // Some input may still sit in the encoder: `dirty` stays set until a
                    // flush.
                    let out = enc.take();
                    if !out.is_empty() {
                        return this.data(out);
                    }
                }
                Err(frame) => {
                    // Trailers end the body: the compressed stream ends before them.
                    this.trailers = frame.into_trailers().ok();
                    this.ended = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.encoder.is_some() || self.trailers.is_some() {
            return false;
        }
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoder.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
