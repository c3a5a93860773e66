//! autolb's own HTTP/1.1 client for the common request: no body, no upgrade, a plain-TCP
//! HTTP/1.1 backend. The head is written with one `send`, the response head is parsed with
//! httparse straight out of the connection's read buffer, and the body is read from the
//! socket by `RawBody` (see `raw_body`) in the request's own task: no connection task, no
//! channels, no hand-offs. hyper stays for request bodies, upgrades, TLS and HTTP/2.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use httparse::ParserConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::interim::{Interim, Slot};
use super::raw_body::{RawBody, ResponseFraming};
use super::RequestBody;

/// The largest response head accepted from a backend (as hyper's default buffer).
const MAX_HEAD: usize = 64 * 1024;
/// Header fields per response head (as hyper's default).
const MAX_HEADERS: usize = 100;
/// Fields a response head's map has room for beyond the backend's (see `parse_response_head`).
const SPARE_FIELDS: usize = 8;
/// The first read of a response; later reads grow when a read fills what it had.
pub(super) const READ_SIZE: usize = 8 * 1024;
/// The largest read when no listener set one (health probes).
const DEFAULT_MAX_READ: usize = 32 * 1024;

/// Why a raw exchange gave no usable response head.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("no response head in time")]
    Timeout,
    #[error("connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    #[error("connection closed in the middle of the response body")]
    ClosedInBody,
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
}

impl RawError {
    /// Nothing came back and the request may never have been read: the backend closed a
    /// reused keep-alive connection under us (or refused the write).
    pub fn nothing_received(&self) -> bool {
        matches!(self, RawError::Write(_) | RawError::Closed)
            || matches!(self, RawError::Read(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }

    /// The request never reached the backend's socket.
    pub fn unsent(&self) -> bool {
        matches!(self, RawError::Write(_))
    }
}

/// One keep-alive connection to a backend and its read buffer.
pub struct RawConn {
    stream: TcpStream,
    pub(super) buf: BytesMut,
    /// The request head being sent (kept for the next one).
    head: Vec<u8>,
    /// The response timeout, kept for the next request: moving a pending timer's deadline
    /// later is one compare-and-swap, where a new timer takes the timer wheel twice.
    timer: Option<Pin<Box<Sleep>>>,
    pub(super) generation: u64,
    /// The size of the next read (`READ_SIZE`, then, once a read filled it, ...
    pub(super) read_size: usize,
    /// ... this: half the client listener's `limits.response_buffer`, set for each
    /// exchange). An HTTP/1 client is handed one chunk at a time (`conn::idle::Tracked`):
    /// the next read comes once the client's socket took the last one, into the same
    /// allocation, so a slow reader holds one read.
    pub(super) max_read: usize,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl RawConn {
    pub fn new(stream: TcpStream, generation: u64) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
            head: Vec::new(),
            timer: None,
            generation,
            read_size: READ_SIZE,
            max_read: DEFAULT_MAX_READ,
        }
    }

    /// Forget the read readiness left over from the last response (no syscall), so that
    /// `is_stale` sees only what the backend does while the connection is idle.
    pub fn park(&self) {
        let _ = self.stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }

    /// An idle connection the backend closed (or wrote to, which it must not) since it was
    /// parked: a readiness check, no syscall.
    pub fn is_stale(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.stream.poll_read_ready(&mut cx).is_ready()
    }

    /// Reads of at most half of `response_buffer` (never less than the first read).
    pub(super) fn limit_reads(&mut self, response_buffer: usize) {
        self.max_read = (response_buffer / 2).max(READ_SIZE);
        self.read_size = self.read_size.min(self.max_read);
    }

    /// Read more of the response into the buffer; `Ok(0)` at the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2
            && !self.buf.try_reclaim(self.read_size)
        {
            // A new allocation of the read's size, with what is left of the old one copied
            // (a part of a chunk-size line at most, usually nothing), rather than `reserve`:
            // `bytes` grows an allocation it owns alone by reallocating it, keeping the
            // bytes already consumed in front of the new room, so the first 8 KiB read
            // stayed part of every later one (a slow reader held 40 KiB for reads of 32).
            let mut fresh = BytesMut::with_capacity(self.read_size + self.buf.len());
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
        loop {
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(n) => {
                    // A full read: a large body. Straight to the largest read, rather than
                    // through sizes in between, each an allocation a slow reader's stream
                    // left behind (measured: 8, 16, 32 KiB reads cost 18 KiB more a slow
                    // reader than 8 then 32).
                    if n >= self.read_size {
                        self.read_size = self.max_read;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Send the head `encode` wrote (a whole bodiless request) and read the response head
    /// within `timeout`; its body follows on the connection, read by the returned `RawBody`.
    pub async fn exchange(
        mut self,
        head_request: bool,
        timeout: Duration,
        interim: Option<&Slot>,
    ) -> Result<Response<RawBody>, RawError> {
        let deadline = Instant::now() + timeout;
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let head = tokio::select! {
            biased;
            head = self.send_and_read(head_request, interim) => head,
            () = &mut timer => Err(RawError::Timeout),
        };
        self.timer = Some(timer);
        let (parts, framing) = head?;
        Ok(Response::from_parts(parts, RawBody::new(self, framing)))
    }

    async fn send_and_read(
        &mut self,
        head_request: bool,
        interim: Option<&Slot>,
    ) -> Result<(Parts, ResponseFraming), RawError> {
        self.stream
            .write_all(&self.head)
            .await
            .map_err(RawError::Write)?;
        if self.head.capacity() > 16 * 1024 {
            self.head = Vec::new();
        }
        loop {
            let (parts, framing) = self.read_head(head_request).await?;
            if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
                // 100 Continue, 103 Early Hints: the final answer follows. An HTTP/1.1
                // client gets the 103 (not the 100) now, written before we read on.
                if let Some(slot) = interim.filter(|_| Interim::forwards(parts.status)) {
                    let interim = slot.get_or_init(Default::default);
                    interim.push(parts.status, &parts.headers);
                    interim.flushed().await;
                }
                continue;
            }
            return Ok((parts, framing));
        }
    }

    async fn read_head(
        &mut self,
        head_request: bool,
    ) -> Result<(Parts, ResponseFraming), RawError> {
        loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = self.parse_head(head_request)? {
                    return Ok(parsed);
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(RawError::HeadTooLarge);
                }
            }
            match self.fill().await {
                Ok(0) if self.buf.is_empty() => return Err(RawError::Closed),
                Ok(0) => return Err(RawError::ClosedInHead),
                Ok(_) => {}
                Err(e) => return Err(RawError::Read(e)),
            }
        }
    }

    fn parse_head(
        &mut self,
        head_request: bool,
    ) -> Result<Option<(Parts, ResponseFraming)>, RawError> {
        parse_response_head(&mut self.buf, head_request)
    }
}

/// The response head at the start of `buf`, once complete (taken out of `buf`; what follows
/// is the body), and how its body is framed. Parsed once, without zeroing the header array;
/// the header values share the frozen head's bytes instead of being copied. Public for
/// fuzzing.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Parts, ResponseFraming)>, RawError> {
    // Parsed once, in place; where each field lies is kept as offsets, so that the values
    // can share the head once it is split off `buf` and frozen.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, version, code, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        match ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(RawError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
                for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
                    let name = h.name.as_bytes();
                    *span = (
                        at(name),
                        name.len() as u32,
                        at(h.value),
                        h.value.len() as u32,
                    );
                }
                (len, resp.version, resp.code, resp.headers.len())
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(RawError::Parse(e)),
        }
    };
    let version = match version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(RawError::Parse(httparse::Error::Status))?;
    let head: Bytes = buf.split_to(len).freeze();
    // Room beyond the backend's fields: autolb adds to the response (X-Request-Id, a
    // sticky cookie), and hyper's server reuses this map for the connection's next request,
    // to which autolb adds its forwarding headers. Without it, both maps grow every time.
    let mut headers = HeaderMap::with_capacity(count + SPARE_FIELDS);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| RawError::Parse(httparse::Error::HeaderName))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
                .map_err(|_| RawError::Parse(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    let framing = framing(status, version, &headers, head_request)?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, framing)))
}

/// How the body of a response is delimited (RFC 9112 section 6.3), and whether the
/// connection can carry another request after it. Ambiguous framing is an error (502).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<ResponseFraming, RawError> {
    let mut keep_alive = version == Version::HTTP_11;
    for v in headers.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                keep_alive = true;
            }
        }
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(ResponseFraming::Empty { keep_alive: false });
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(ResponseFraming::Empty { keep_alive });
    }
    let length = content_length(headers)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        if length.is_some() {
            return Err(RawError::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(RawError::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let last = codings.next_back();
        if codings.any(|c| c.eq_ignore_ascii_case(b"chunked")) {
            return Err(RawError::Framing("chunked applied more than once"));
        }
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => {
                ResponseFraming::Chunked { keep_alive }
            }
            // Not chunked last: the body runs to the end of the connection.
            _ => ResponseFraming::Close,
        });
    }
    Ok(match length {
        Some(0) => ResponseFraming::Empty { keep_alive },
        Some(n) => ResponseFraming::Length {
            remaining: n,
            keep_alive,
        },
        None => ResponseFraming::Close,
    })
}

/// The Content-Length of a response: every value (and every list element) the same run of
/// digits, or an error.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, RawError> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(RawError::Framing("invalid Content-Length"));
            }
            let n = part
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(RawError::Framing("conflicting Content-Length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

impl RawConn {
    /// Write the request head as it goes to the backend: origin-form, HTTP/1.1, the headers
    /// as they are (hop-by-hop ones were already removed, Host set).
    pub fn encode(&mut self, req: &Request<RequestBody>) {
        encode_head(req, &mut self.head);
    }
}

fn encode_head(req: &Request<RequestBody>, buf: &mut Vec<u8>) {
    let method = req.method().as_str().as_bytes();
    let target = req
        .uri()
        .path_and_query()
        .map_or(&b"/"[..], |p| p.as_str().as_bytes());
    let mut len = method.len() + target.len() + 13;
    for (name, value) in req.headers() {
        len += name.as_str().len() + value.len() + 4;
    }
    buf.clear();
    buf.reserve(len);
    buf.extend_from_slice(method);
    buf.push(b' ');
    buf.extend_from_slice(target);
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// A new plain-TCP connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Why `connect` failed.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn frame(pairs: &[(&str, &str)]) -> Result<ResponseFraming, RawError> {
        framing(StatusCode::OK, Version::HTTP_11, &map(pairs), false)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert!(matches!(
            frame(&[("content-length", "5")]),
            Ok(ResponseFraming::Length {
                remaining: 5,
                keep_alive: true
            })
        ));
        assert!(matches!(
            frame(&[("content-length", "5, 5"), ("content-length", "5")]),
            Ok(ResponseFraming::Length { remaining: 5, .. })
        ));
        assert!(matches!(
            frame(&[("transfer-encoding", "gzip, chunked")]),
            Ok(ResponseFraming::Chunked { keep_alive: true })
        ));
        assert!(matches!(
            frame(&[("transfer-encoding", "gzip")]),
            Ok(ResponseFraming::Close)
        ));
        assert!(matches!(frame(&[]), Ok(ResponseFraming::Close)));
        assert!(matches!(
            frame(&[("content-length", "0"), ("connection", "close")]),
            Ok(ResponseFraming::Empty { keep_alive: false })
        ));
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "+5")],
            &[("content-length", "0x5")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked, chunked")],
        ] {
            assert!(frame(bad).is_err(), "{bad:?}");
        }
        let head = framing(
            StatusCode::OK,
            Version::HTTP_11,
            &map(&[("content-length", "5")]),
            true,
        );
        assert!(matches!(
            head,
            Ok(ResponseFraming::Empty { keep_alive: true })
        ));
        let old = framing(
            StatusCode::OK,
            Version::HTTP_10,
            &map(&[("content-length", "5")]),
            false,
        );
        assert!(matches!(
            old,
            Ok(ResponseFraming::Length {
                keep_alive: false,
                ..
            })
        ));
    }

    #[test]
    fn heads_are_encoded_in_origin_form() {
        let req = Request::builder()
            .method("GET")
            .uri("/a?b=1")
            .header("host", "example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .body(RequestBody::Empty)
            .unwrap();
        let mut head = Vec::new();
        encode_head(&req, &mut head);
        assert_eq!(
            &head[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }
}
