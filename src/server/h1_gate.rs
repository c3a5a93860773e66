//! A strict RFC 9112 gate in front of hyper on HTTP/1 client connections. It holds each
//! request head back until it is complete, validates it (`proxy::validate::check_head`),
//! follows the body's framing (Content-Length or chunked, with chunk sizes, extensions and
//! trailers checked) to find the next head, and:
//! - hands a head that fails to hyper as an invalid request line, so that hyper answers
//!   `400` in order and closes; nothing of it reaches a backend. A chunked body error
//!   found in the bytes that arrived with the head does the same;
//! - cuts the connection on a later body error or a chunked body over `max_body`;
//! - adds `Connection: close` to the head of the `max_requests_per_connection`th request;
//! - hands hyper, instead of a head over `max_header_bytes` (however it arrived), the start
//!   of a head longer than hyper's buffer limit, which hyper answers with 431 and closes;
//! - steps aside (passes bytes through) after an upgrade and on the HTTP/2 preface (h2c).

use crate::config::Limits;
use crate::proxy::validate::{check_head, is_tchar, RequestFraming};

/// What hyper is fed instead of a refused head: an invalid method, answered with 400.
const REFUSED: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";
/// The start of what hyper is fed instead of a head over `max_header_bytes`.
const TOO_LARGE: &[u8] = b"GET / HTTP/1.1\r\nX-Too-Large: ";

/// hyper's read buffer limit for a connection with this `max_header_bytes` (hyper's least
/// is 8 KiB): a head that fills it is answered with 431.
pub fn hyper_head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192)
}
/// Chunk extensions (and trailers) of one chunk may not exceed this.
const MAX_LINE: usize = 16 * 1024;
/// The chunk error of a body that outgrew `max_body` (a 413, not a 400, when it is answered).
const OVER_MAX_BODY: &str = "chunked body over max_body";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, size: u64 },
    Ext { len: usize, size: u64 },
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer(usize),
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    Passthrough,
    /// A refused head was handed on: nothing more is read.
    Closed,
    /// A body error after its head was forwarded: the read fails.
    Failed,
}

/// The framing state of one connection's request stream (separate from I/O for tests).
#[derive(Debug)]
pub struct Framer {
    state: State,
    head: Vec<u8>,
    body: u64,
    requests: u64,
    max_head: usize,
    max_body: u64,
    max_requests: u64,
    /// The body failed by outgrowing `max_body`.
    over_max_body: bool,
}

impl Framer {
    /// Waiting for (or reading) a request head.
    pub(super) fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// Between requests, after at least one, with nothing of the next one read.
    pub(super) fn at_rest(&self) -> bool {
        self.state == State::Head && self.head.is_empty() && self.requests > 0
    }

    /// Bytes pass through unexamined (a tunnel, HTTP/2), nothing held back.
    pub(super) fn passing_through(&self) -> bool {
        self.state == State::Passthrough && self.head.is_empty()
    }

    /// The client closed: hand on what there is of a head (hyper judges it), read no more.
    pub(super) fn end_of_input(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.head);
        self.state = State::Closed;
    }

    /// Give back the head buffer (once passing through, or while the connection is idle).
    pub(super) fn release_buffers(&mut self) {
        self.head = Vec::new();
    }

    pub fn new(limits: &Limits) -> Framer {
        Framer {
            state: State::Head,
            head: Vec::new(),
            body: 0,
            requests: 0,
            max_head: limits.max_header_bytes,
            max_body: limits.max_body,
            max_requests: limits.max_requests_per_connection,
            over_max_body: false,
        }
    }

    /// The `max_body` a failed body outgrew (`None`: it failed otherwise, or did not).
    pub(super) fn over_max_body(&self) -> Option<u64> {
        (self.failed() && self.over_max_body).then_some(self.max_body)
    }

    /// True once the connection must end (after its pending output).
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    pub fn closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Feed bytes read from the client; what hyper may see is appended to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        // Where the head released by this call starts in `out`: a body error in the same
        // bytes still turns the whole request into a 400.
        let mut released_at: Option<usize> = None;
        while !data.is_empty() {
            match self.state {
                State::Closed | State::Failed => return,
                State::Passthrough => {
                    out.extend_from_slice(data);
                    return;
                }
                State::Head => {
                    // The common case: a whole head in one read, checked where it lies.
                    if self.head.is_empty() {
                        if let Some(end) = head_end(data, 0) {
                            let (head, rest) = data.split_at(end.min(data.len()));
                            released_at = Some(out.len());
                            if !self.release(head, out) {
                                return;
                            }
                            data = rest;
                            continue;
                        }
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(data);
                    let Some(end) = head_end(&self.head, before) else {
                        if self.head.len() > self.max_head {
                            self.head = Vec::new();
                            self.too_large(out);
                        }
                        return;
                    };
                    let rest_from = end - before;
                    data = &data[rest_from.min(data.len())..];
                    let mut head = std::mem::take(&mut self.head);
                    released_at = Some(out.len());
                    let released = self.release(&head[..end], out);
                    // Keep the allocation for the next head that arrives in pieces.
                    head.clear();
                    self.head = head;
                    if !released {
                        return;
                    }
                }
                State::Length(n) => {
                    let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    out.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                }
                State::Chunked(c) => match self.chunk(c, data, out) {
                    Ok(used) => data = &data[used..],
                    Err(why) => {
                        tracing::debug!(error = why, "bad chunked body");
                        self.over_max_body = why == OVER_MAX_BODY;
                        match released_at {
                            Some(at) => {
                                out.truncate(at);
                                out.extend_from_slice(REFUSED);
                                self.state = State::Closed;
                            }
                            None => self.state = State::Failed,
                        }
                        return;
                    }
                },
            }
        }
    }

    /// Check a complete request head and pass it on (with `Connection: close` once the
    /// connection's request limit is reached); false when it was refused (400, closed).
    fn release(&mut self, head: &[u8], out: &mut Vec<u8>) -> bool {
        if head.len() > self.max_head {
            self.too_large(out);
            return false;
        }
        if self.requests == 0 && head.starts_with(b"PRI * HTTP/2.0\r\n") {
            out.extend_from_slice(head);
            self.state = State::Passthrough;
            return true;
        }
        match check_head(head) {
            Err(e) => {
                tracing::debug!(error = %e, "request refused: 400");
                out.extend_from_slice(REFUSED);
                self.state = State::Closed;
                false
            }
            Ok(framing) => {
                self.requests += 1;
                if self.max_requests > 0 && self.requests >= self.max_requests {
                    out.extend_from_slice(&head[..head.len() - 2]);
                    out.extend_from_slice(b"Connection: close\r\n\r\n");
                } else {
                    out.extend_from_slice(head);
                }
                self.body = 0;
                self.state = match framing {
                    RequestFraming::None => State::Head,
                    RequestFraming::Length(n) => State::Length(n),
                    RequestFraming::Chunked => State::Chunked(Chunk::Size { digits: 0, size: 0 }),
                    RequestFraming::Tunnel => State::Passthrough,
                };
                true
            }
        }
    }

    /// Refuse a head over `max_header_bytes`: hyper gets the start of a head that fills its
    /// buffer limit (and answers 431), then nothing more.
    fn too_large(&mut self, out: &mut Vec<u8>) {
        tracing::debug!(max = self.max_head, "request head too large: 431");
        let len = out.len() + hyper_head_limit(self.max_head) + 1;
        out.extend_from_slice(TOO_LARGE);
        out.resize(len, b'a');
        self.state = State::Closed;
    }

    /// Advance the chunked body over `data`; returns the bytes consumed.
    fn chunk(&mut self, c: Chunk, data: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
        if let Chunk::Data(n) = c {
            let k = (n as usize).min(data.len());
            out.extend_from_slice(&data[..k]);
            let left = n - k as u64;
            self.state = State::Chunked(if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            });
            return Ok(k);
        }
        let b = data[0];
        let next = match c {
            Chunk::Size { digits, size } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err("chunk size overflow");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        digits: digits + 1,
                        size: size << 4 | d,
                    }
                }
                _ if digits == 0 => return Err("chunk size missing"),
                b';' | b' ' | b'\t' => Chunk::Ext { len: 1, size },
                b'\r' => Chunk::SizeLf(size),
                _ => return Err("invalid chunk size"),
            },
            Chunk::Ext { len, size } => match b {
                b'\r' => Chunk::SizeLf(size),
                _ if len >= MAX_LINE => return Err("chunk extension too long"),
                b';' | b'=' | b'"' | b'\\' | b' ' | b'\t' | 0x80..=0xff => {
                    Chunk::Ext { len: len + 1, size }
                }
                _ if is_tchar(b) => Chunk::Ext { len: len + 1, size },
                _ => return Err("invalid byte in chunk extension"),
            },
            Chunk::SizeLf(size) => {
                if b != b'\n' {
                    return Err("chunk size line without CRLF");
                }
                self.body = self.body.saturating_add(size);
                if self.body > self.max_body {
                    return Err(OVER_MAX_BODY);
                }
                if size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { digits: 0, size: 0 },
            Chunk::DataCr | Chunk::DataLf => return Err("chunk data without CRLF"),
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b' ' | b'\t' => return Err("obs-fold in trailer"),
                _ if is_tchar(b) => Chunk::Trailer(1),
                _ => return Err("invalid trailer"),
            },
            Chunk::Trailer(len) => match b {
                b'\r' => Chunk::TrailerLf,
                _ if len >= MAX_LINE => return Err("trailer too long"),
                b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::Trailer(len + 1),
                _ => return Err("control character in trailer"),
            },
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::TrailerLf => return Err("bare CR in trailer"),
            Chunk::EndLf if b == b'\n' => {
                out.push(b);
                self.state = State::Head;
                return Ok(1);
            }
            Chunk::EndLf => return Err("chunked body end without CRLF"),
            Chunk::Data(_) => unreachable!("handled above"),
        };
        out.push(b);
        self.state = State::Chunked(next);
        Ok(1)
    }
}

/// The end of a head in `buf` (index after its empty line), searching from near `from`.
/// A bare-LF empty line ends it too (and is then refused by `check_head`).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    // Skip leading empty lines (RFC 9112 2.2).
    let lead = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let lead = lead - lead % 2;
    let start = start.max(lead);
    memchr::memchr_iter(b'\n', buf.get(start..)?).find_map(|i| {
        let i = start + i;
        match buf.get(i + 1) {
            Some(b'\n') => Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn run(input: &[&[u8]]) -> (Vec<u8>, Framer) {
        let mut f = Framer::new(&Limits::default());
        let mut out = Vec::new();
        for piece in input {
            f.feed(piece, &mut out);
        }
        (out, f)
    }

    #[test]
    fn pipelined_requests_pass_in_pieces() {
        let req: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y\"\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let whole = run(&[req]).0;
        assert_eq!(whole, req);
        let pieces: Vec<&[u8]> = req.chunks(3).collect();
        let (bytes, f) = run(&pieces);
        assert_eq!(bytes, req);
        assert_eq!(f.state, State::Head);
    }

    #[test]
    fn bad_chunks_refuse_or_fail() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (out, f) = run(&[head, b"FFFFFFFFFFFFFFFFF\r\n"]);
        assert!(f.failed() && out.starts_with(head));
        assert_eq!(f.over_max_body(), None);
        // A size past max_body (1 GiB by default) after the head went on: cut as too large.
        let (_, f) = run(&[head, b"5\r\nhello\r\n40000000\r\n"]);
        assert!(f.failed());
        assert_eq!(f.over_max_body(), Some(1 << 30));
        let whole = [head, b"5;\x00\r\nhello\r\n0\r\n\r\n"].concat();
        let (out, f) = run(&[&whole]);
        assert_eq!(out, REFUSED);
        assert!(f.closed() && !f.failed());
    }

    #[test]
    fn the_last_allowed_request_asks_to_close() {
        let mut f = Framer::new(&Limits {
            max_requests_per_connection: 2,
            ..Limits::default()
        });
        let mut out = Vec::new();
        f.feed(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            &mut out,
        );
        assert!(out.ends_with(b"Host: a\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn the_h2_preface_passes_through() {
        let (out, f) = run(&[H2_PREFACE, b"\x00\x00"]);
        assert_eq!(out, [H2_PREFACE, b"\x00\x00"].concat());
        assert_eq!(f.state, State::Passthrough);
    }

    #[test]
    fn heads_over_max_header_bytes_are_refused_however_they_arrive() {
        let limit = hyper_head_limit(64 * 1024) + 1;
        let refused = |out: &[u8], f: &Framer| {
            assert_eq!(out.len(), limit);
            assert!(out.starts_with(TOO_LARGE) && !out.windows(2).any(|w| w == b"\n\r"));
            assert!(f.closed() && !f.failed());
        };
        // Never complete, in pieces.
        let big = vec![b'a'; 70 * 1024];
        let (out, f) = run(&[b"GET / HTTP/1.1\r\nX: ", &big]);
        refused(&out, &f);
        // Complete, 70,000 bytes, in 16 KiB reads: no piece alone is over the limit.
        let head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(69_968)
        );
        assert_eq!(head.len(), 70_000);
        let pieces: Vec<&[u8]> = head.as_bytes().chunks(16 * 1024).collect();
        let (out, f) = run(&pieces);
        refused(&out, &f);
        // Complete in one read, over a small limit.
        let mut f = Framer::new(&Limits {
            max_header_bytes: 100,
            ..Limits::default()
        });
        let mut out = Vec::new();
        f.feed(
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "c".repeat(100)
            )
            .as_bytes(),
            &mut out,
        );
        assert_eq!(out.len(), 8193);
        assert!(f.closed());
        // At the limit exactly: passed on.
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "d".repeat(65_536 - 32)
        );
        assert_eq!(exact.len(), 65_536);
        let pieces: Vec<&[u8]> = exact.as_bytes().chunks(16 * 1024).collect();
        let (out, f) = run(&pieces);
        assert_eq!(out, exact.as_bytes());
        assert_eq!(f.state, State::Head);
    }
}
