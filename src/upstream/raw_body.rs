//! The body of a response read by autolb's own HTTP/1.1 client: Content-Length, chunked or
//! close-delimited, decoded straight from the connection's read buffer into frames that
//! share it. Once the body has been read to its end, the connection is handed back for reuse.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::raw::{RawConn, RawError};

/// Trailer section limit for chunked bodies (the fields are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits of a chunk size (16 = 2^64 - 1).
const MAX_SIZE_DIGITS: u8 = 16;

/// How a response body is delimited, from its head.
#[derive(Debug, Clone, Copy)]
pub enum ResponseFraming {
    /// No body (HEAD, 204, 304, Content-Length: 0).
    Empty {
        keep_alive: bool,
    },
    Length {
        remaining: u64,
        keep_alive: bool,
    },
    Chunked {
        keep_alive: bool,
    },
    /// Until the backend closes the connection (never reused).
    Close,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CRLF.
    SizeWs {
        value: u64,
    },
    Ext {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Trailer fields: `line` bytes into the current line, `total` into the section.
    Trailer {
        line: usize,
        total: usize,
        cr: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// A response body read from a `RawConn`.
#[derive(Debug)]
pub struct RawBody {
    conn: Option<RawConn>,
    state: State,
    keep_alive: bool,
    exact: Option<u64>,
}

impl RawBody {
    pub(super) fn new(conn: RawConn, framing: ResponseFraming) -> RawBody {
        let (state, keep_alive, exact) = match framing {
            ResponseFraming::Empty { keep_alive } => (State::Done, keep_alive, Some(0)),
            ResponseFraming::Length {
                remaining,
                keep_alive,
            } => (State::Length(remaining), keep_alive, Some(remaining)),
            ResponseFraming::Chunked { keep_alive } => (
                State::Chunked(Chunk::Size {
                    value: 0,
                    digits: 0,
                }),
                keep_alive,
                None,
            ),
            ResponseFraming::Close => (State::Close, false, None),
        };
        RawBody {
            conn: Some(conn),
            state,
            keep_alive,
            exact,
        }
    }

    /// Bytes of the body (or past it) are already read and waiting.
    pub fn has_buffered(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.buf.is_empty())
    }

    /// The connection, once the body was read to its end and the connection may carry
    /// another request.
    pub fn take_reusable(&mut self) -> Option<RawConn> {
        if matches!(self.state, State::Done | State::Length(0)) && self.keep_alive {
            self.conn.take().filter(|c| c.buf.is_empty())
        } else {
            None
        }
    }

    fn fail(&mut self, e: RawError) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        self.conn = None;
        self.state = State::Done;
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }
}

/// What the chunked decoder made of the buffered bytes.
enum Decoded {
    /// A piece of a chunk's data.
    Data(Bytes),
    /// More input is needed.
    More,
    /// The last chunk and the trailer section were read.
    End,
}

/// Decode chunked framing from `buf`, from the decoder state `state`.
fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, RawError> {
    let mut chunk = *state;
    let bad = RawError::Chunked;
    loop {
        if let Chunk::Data { remaining } = chunk {
            if remaining == 0 {
                chunk = Chunk::DataCr;
                continue;
            }
            if buf.is_empty() {
                break;
            }
            let n = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            *state = Chunk::Data {
                remaining: remaining - n as u64,
            };
            return Ok(Decoded::Data(data));
        }
        let Some(&b) = buf.first() else { break };
        buf.advance(1);
        chunk = match (chunk, b) {
            (Chunk::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= MAX_SIZE_DIGITS {
                    return Err(bad("chunk size overflows"));
                }
                let d = (b as char).to_digit(16).unwrap_or(0);
                Chunk::Size {
                    value: (value << 4) | u64::from(d),
                    digits: digits + 1,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(bad("chunk size expected")),
            (Chunk::Size { value, .. } | Chunk::SizeWs { value }, b' ' | b'\t') => {
                Chunk::SizeWs { value }
            }
            (Chunk::Size { value, .. } | Chunk::SizeWs { value }, b';') => Chunk::Ext { value },
            (Chunk::Size { value, .. } | Chunk::SizeWs { value } | Chunk::Ext { value }, b'\r') => {
                Chunk::SizeLf { value }
            }
            (Chunk::Size { .. } | Chunk::SizeWs { .. }, _) => {
                return Err(bad("invalid byte after the chunk size"))
            }
            (Chunk::Ext { value }, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                Chunk::Ext { value }
            }
            (Chunk::Ext { .. }, _) => return Err(bad("invalid chunk extension")),
            (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::Trailer {
                line: 0,
                total: 0,
                cr: false,
            },
            (Chunk::SizeLf { value }, b'\n') => Chunk::Data { remaining: value },
            (Chunk::SizeLf { .. }, _) => return Err(bad("bare CR after the chunk size")),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataCr, _) => return Err(bad("chunk longer than its size")),
            (Chunk::DataLf, b'\n') => Chunk::Size {
                value: 0,
                digits: 0,
            },
            (Chunk::DataLf, _) => return Err(bad("bare CR after chunk data")),
            (Chunk::Trailer { line, total, cr }, b) => {
                if total >= MAX_TRAILERS {
                    return Err(bad("trailer section too large"));
                }
                match (cr, b) {
                    (false, b'\r') => Chunk::Trailer {
                        line,
                        total: total + 1,
                        cr: true,
                    },
                    (true, b'\n') if line == 0 => return Ok(Decoded::End),
                    (true, b'\n') => Chunk::Trailer {
                        line: 0,
                        total: total + 1,
                        cr: false,
                    },
                    (false, b) if b != b'\n' && b != 0 => Chunk::Trailer {
                        line: line + 1,
                        total: total + 1,
                        cr: false,
                    },
                    _ => return Err(bad("invalid trailer line")),
                }
            }
            // Handled above, before a byte is taken.
            (Chunk::Data { .. }, _) => return Err(bad("chunk data out of place")),
        };
    }
    *state = chunk;
    Ok(Decoded::More)
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = RawError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Length(remaining) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return this.fail(RawError::ClosedInBody);
                    };
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        this.state = State::Length(remaining - n as u64);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Close => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(mut chunk) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return this.fail(RawError::ClosedInBody);
                    };
                    match decode_chunked(&mut chunk, &mut conn.buf) {
                        Err(e) => return this.fail(e),
                        Ok(Decoded::Data(data)) => {
                            this.state = State::Chunked(chunk);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Decoded::End) => {
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::More) => this.state = State::Chunked(chunk),
                    }
                }
            }
            // The buffer is drained: read more.
            let Some(conn) = this.conn.as_mut() else {
                return this.fail(RawError::ClosedInBody);
            };
            match std::task::ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(RawError::ClosedInBody),
                Ok(_) => {}
                Err(e) => return this.fail(RawError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (self.exact, self.state) {
            (Some(_), State::Length(n)) => SizeHint::with_exact(n),
            (Some(_), State::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Decode a whole chunked body handed over in pieces of `piece` bytes (for fuzzing and
/// tests): its data, `Ok(None)` when the input ends before the body does, or the error.
pub fn decode_chunked_body(input: &[u8], piece: usize) -> Result<Option<Vec<u8>>, RawError> {
    let mut state = Chunk::Size {
        value: 0,
        digits: 0,
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in input.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        loop {
            match decode_chunked(&mut state, &mut buf)? {
                Decoded::Data(data) => out.extend_from_slice(&data),
                Decoded::More => break,
                Decoded::End => return Ok(Some(out)),
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_whatever_the_pieces() {
        let body = b"5;ext=\"a;b\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, 64] {
            let got = decode_chunked_body(body, piece).expect("valid");
            assert_eq!(
                got.as_deref(),
                Some(&b"hello0123456789"[..]),
                "piece {piece}"
            );
        }
        assert_eq!(decode_chunked_body(b"5\r\nhel", 4).expect("partial"), None);
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhello!\r\n",
            b"5\nhello\r\n",
            b"5;a\x00\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX\x00\r\n\r\n",
        ] {
            assert!(decode_chunked_body(bad, 3).is_err(), "{bad:?}");
        }
    }
}
