//! gRPC-Web (`grpc_web: true` on a pool), Envoy's `grpc_web` filter: a browser's
//! `application/grpc-web[+proto]` or `application/grpc-web-text[+proto]` (base64) request
//! becomes a gRPC call to the pool's HTTP/2 backends, and the answer comes back as gRPC-Web:
//! its messages as they are (base64 for -text), its trailers as a last frame (flag 0x80,
//! `name: value\r\n` lines). CORS for `grpc_web_origins`: preflights answered, the
//! answer's gRPC headers exposed.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::body::ProxyBody;
use crate::config::GrpcWeb;
use crate::upstream::client_body::BadText;
use crate::upstream::BodyError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The headers a browser may read from an answer (CORS).
const EXPOSED: &str = "grpc-status,grpc-message,grpc-status-details-bin";

/// How a gRPC-Web request encodes its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    /// `-text`: base64.
    Text,
}

/// A gRPC-Web request's mode, from its content type.
pub fn mode(headers: &HeaderMap) -> Option<Mode> {
    let ct = headers
        .get(CONTENT_TYPE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    let rest = ct.strip_prefix("application/grpc-web")?;
    match rest.strip_prefix("-text") {
        Some(r) if r.is_empty() || r.starts_with('+') || r.starts_with(';') => Some(Mode::Text),
        None if rest.is_empty() || rest.starts_with('+') || rest.starts_with(';') => {
            Some(Mode::Binary)
        }
        _ => None,
    }
}

/// Turn a gRPC-Web request's headers into a gRPC call's: `application/grpc[+codec]`,
/// no Content-Length (a -text body shrinks). The caller keeps `te: trailers` for it.
pub fn request_headers(headers: &mut HeaderMap) {
    let codec = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split_once('+').map(|(_, c)| c.to_owned()));
    let ct = match codec {
        Some(c) => HeaderValue::from_str(&format!("application/grpc+{c}"))
            .unwrap_or(HeaderValue::from_static("application/grpc")),
        None => HeaderValue::from_static("application/grpc"),
    };
    headers.insert(CONTENT_TYPE, ct);
    headers.remove(CONTENT_LENGTH);
}

/// The `Access-Control-Allow-Origin` for a request's Origin, when the pool allows it.
fn allowed_origin(cfg: &GrpcWeb, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?.to_ascii_lowercase();
    cfg.origins
        .iter()
        .any(|o| o == "*" || *o == text)
        .then(|| origin.clone())
}

/// A CORS preflight for a gRPC-Web pool (OPTIONS with Access-Control-Request-Method):
/// 204 with the allowed method and headers for an allowed Origin, 403 otherwise.
pub fn preflight(
    cfg: &GrpcWeb,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response<ProxyBody>> {
    if method != Method::OPTIONS || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let mut resp = Response::new(ProxyBody::empty());
    let Some(origin) = allowed_origin(cfg, headers) else {
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return Some(resp);
    };
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(VARY, HeaderValue::from_static("origin"));
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    let allow = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization",
        ));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    Some(resp)
}

/// The gRPC-Web answer to a call: the request's content type, CORS headers for an allowed
/// Origin, and its body (and trailers) as gRPC-Web frames. `request`: the request's
/// headers as the client sent them.
pub fn response(
    resp: Response<ProxyBody>,
    mode: Mode,
    cfg: &GrpcWeb,
    request: &HeaderMap,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let h = &mut parts.headers;
    let grpc = h
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // The client's own gRPC-Web content type (Envoy's choice too).
        if let Some(ct) = request.get(CONTENT_TYPE) {
            h.insert(CONTENT_TYPE, ct.clone());
        }
    }
    h.remove(CONTENT_LENGTH);
    if let Some(origin) = allowed_origin(cfg, request) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(VARY, HeaderValue::from_static("origin"));
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    let body = WebBody {
        inner: body,
        mode,
        pending: BytesMut::new(),
        done: false,
    };
    Response::from_parts(parts, ProxyBody::GrpcWeb(Box::new(body)))
}

/// The trailers of a call as gRPC-Web's last frame.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_slice(b": ");
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(0x80);
    out.put_u32(block.len() as u32);
    out.put_slice(&block);
    out.freeze()
}

/// A call's answer on its way to a gRPC-Web client.
pub struct WebBody {
    pub(super) inner: ProxyBody,
    mode: Mode,
    /// -text: bytes not yet encoded (less than 3, so that every chunk is whole base64).
    pending: BytesMut,
    done: bool,
}

impl WebBody {
    /// `data` as it goes out: as it is, or base64 in whole 3-byte groups (`last`: all).
    fn encode(&mut self, data: &[u8], last: bool) -> Option<Bytes> {
        if self.mode == Mode::Binary {
            return (!data.is_empty()).then(|| Bytes::copy_from_slice(data));
        }
        self.pending.extend_from_slice(data);
        let n = if last {
            self.pending.len()
        } else {
            self.pending.len() / 3 * 3
        };
        if n == 0 {
            return None;
        }
        let chunk = self.pending.split_to(n);
        Some(Bytes::from(B64.encode(&chunk)))
    }
}

impl Body for WebBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(out) = this.encode(&[], true) {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(out) = this.encode(&data, false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers: the call's status, in the body's last frame.
                        let t = frame.into_trailers().unwrap_or_default();
                        this.done = true;
                        if let Some(out) = this.encode(&trailer_frame(&t), true) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.pending.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A -text request body decoded from base64 as it streams (4-character groups).
#[derive(Debug)]
pub struct TextBody<B> {
    inner: B,
    pending: Vec<u8>,
    /// Where a bad body is noted as the client's fault.
    watch: Option<crate::upstream::client_fault::FaultWatch>,
}

impl<B> TextBody<B> {
    pub fn new(inner: B, watch: Option<crate::upstream::client_fault::FaultWatch>) -> TextBody<B> {
        TextBody {
            inner,
            pending: Vec::new(),
            watch,
        }
    }

    fn bad(&self, e: base64::DecodeError) -> BadText {
        if let Some(w) = &self.watch {
            w.set(crate::upstream::client_fault::ClientFault::Aborted);
        }
        BadText(e)
    }
}

impl<B> Body for TextBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<BadText>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(data) = frame.data_ref() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    this.pending
                        .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    let n = this.pending.len() / 4 * 4;
                    if n == 0 {
                        continue;
                    }
                    let chunk: Vec<u8> = this.pending.drain(..n).collect();
                    return Poll::Ready(Some(
                        B64.decode(&chunk)
                            .map(|d| Frame::data(Bytes::from(d)))
                            .map_err(|e| this.bad(e).into()),
                    ));
                }
                Poll::Ready(None) if !this.pending.is_empty() => {
                    let rest = std::mem::take(&mut this.pending);
                    return Poll::Ready(Some(
                        B64.decode(&rest)
                            .map(|d| Frame::data(Bytes::from(d)))
                            .map_err(|e| this.bad(e).into()),
                    ));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_come_from_the_content_type() {
        let h = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            mode(&h)
        };
        assert_eq!(h("application/grpc-web"), Some(Mode::Binary));
        assert_eq!(h("application/grpc-web+proto"), Some(Mode::Binary));
        assert_eq!(h("application/grpc-web-text"), Some(Mode::Text));
        assert_eq!(h("application/grpc-web-text+proto"), Some(Mode::Text));
        assert_eq!(h("application/grpc"), None);
        assert_eq!(h("application/grpc-webby"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        request_headers(&mut headers);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc+proto");
        assert!(!headers.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailer_frame(&t);
        assert_eq!(&f[..], b"\x80\x00\x00\x00\x10grpc-status: 0\r\n");
    }
}
