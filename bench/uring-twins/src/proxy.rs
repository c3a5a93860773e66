//! The HTTP/1.1 keep-alive reverse-proxy logic both twins run, generic over the I/O
//! (`Stream`, `Net`): parse the request head with httparse, add `X-Forwarded-For`, forward it
//! round robin over a per-worker pool of keep-alive backend connections, read the response
//! head with httparse and forward a Content-Length body. Chunked bodies (either way) and
//! responses without a length are refused with 502. Every read and write goes through owned
//! buffers (what io_uring needs), so the only difference between the twins is the runtime.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

/// Capacity of every read buffer (client and backend): request and response heads must fit.
pub const BUF: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A connected byte stream with owned-buffer reads and writes (the io_uring model; the epoll
/// twin implements it over `&mut [u8]` calls).
// `async fn` in a public trait: the twins are single-threaded, no `Send` bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Stream {
    /// Reads into `buf`'s spare capacity (after its length) and grows its length by the bytes
    /// read; returns how many (0 at end of stream) and the buffer.
    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes `buf[from..to]` entirely; returns the buffer.
    async fn write_range(
        &mut self,
        buf: Vec<u8>,
        from: usize,
        to: usize,
    ) -> (io::Result<()>, Vec<u8>);
}

/// Opens backend connections.
#[allow(async_fn_in_trait)]
pub trait Net {
    type Stream: Stream;
    /// Connects to `addr` (with TCP_NODELAY).
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream>;
}

/// A backend connection with its read buffer.
struct Upstream<S> {
    stream: S,
    buf: Vec<u8>,
}

/// The per-worker state: the backends, the round-robin cursor and the idle connections of
/// each backend (a LIFO stack, as autolb's own client keeps them).
pub struct Proxy<N: Net> {
    backends: Vec<SocketAddr>,
    next: Cell<usize>,
    idle: RefCell<Vec<Vec<Upstream<N::Stream>>>>,
}

impl<N: Net> Proxy<N> {
    pub fn new(backends: Vec<SocketAddr>) -> Rc<Self> {
        let idle = RefCell::new(backends.iter().map(|_| Vec::new()).collect());
        Rc::new(Self {
            backends,
            next: Cell::new(0),
            idle,
        })
    }

    fn pick(&self) -> usize {
        let i = self.next.get();
        self.next.set((i + 1) % self.backends.len());
        i
    }

    /// An idle connection to backend `i` (`true`: reused) or a new one.
    async fn take(&self, i: usize) -> io::Result<(Upstream<N::Stream>, bool)> {
        let reused = self.idle.borrow_mut()[i].pop();
        match reused {
            Some(up) => Ok((up, true)),
            None => Ok((
                Upstream {
                    stream: N::connect(self.backends[i]).await?,
                    buf: Vec::with_capacity(BUF),
                },
                false,
            )),
        }
    }

    fn give_back(&self, i: usize, mut up: Upstream<N::Stream>) {
        up.buf.clear();
        self.idle.borrow_mut()[i].push(up);
    }
}

/// What the request head says, once parsed.
struct RequestHead {
    head_len: usize,
    body_len: usize,
    close: bool,
    head_method: bool,
}

/// What the response head says, once parsed.
struct ResponseHead {
    head_len: usize,
    body_len: usize,
    close: bool,
}

/// Serves one client connection until it closes, asks to close or fails.
pub async fn serve<N: Net>(proxy: Rc<Proxy<N>>, mut client: N::Stream, peer: SocketAddr) {
    let mut cbuf = Vec::with_capacity(BUF);
    let mut out = Vec::with_capacity(4096);
    let ip = peer.ip().to_string();
    loop {
        match exchange(&proxy, &mut client, cbuf, out, &ip).await {
            (Ok(true), c, o) => {
                cbuf = c;
                out = o;
            }
            (_, _, _) => return,
        }
    }
}

/// One request and its response. `Ok(true)`: the connection stays open for the next one.
async fn exchange<N: Net>(
    proxy: &Proxy<N>,
    client: &mut N::Stream,
    mut cbuf: Vec<u8>,
    mut out: Vec<u8>,
    ip: &str,
) -> (io::Result<bool>, Vec<u8>, Vec<u8>) {
    // The request head (possibly already read with the previous request).
    let req = loop {
        match parse_request(&cbuf, ip, &mut out) {
            Ok(Some(req)) => break req,
            Ok(None) if cbuf.len() == cbuf.capacity() => {
                return refuse(client, cbuf, out, TOO_LARGE).await;
            }
            Ok(None) => {}
            Err(()) => return refuse(client, cbuf, out, BAD_REQUEST).await,
        }
        let (res, b) = client.read_more(cbuf).await;
        cbuf = b;
        match res {
            Ok(0) => return (Ok(false), cbuf, out),
            Ok(_) => {}
            Err(e) => return (Err(e), cbuf, out),
        }
    };
    // The body bytes already read go out with the head, in one write.
    let prefix = req.body_len.min(cbuf.len() - req.head_len);
    out.extend_from_slice(&cbuf[req.head_len..req.head_len + prefix]);
    consume(&mut cbuf, req.head_len + prefix);
    let mut body_left = req.body_len - prefix;

    let i = proxy.pick();
    let mut attempt = 0;
    let (mut up, resp) = loop {
        attempt += 1;
        let (mut up, reused) = match proxy.take(i).await {
            Ok(u) => u,
            Err(_) => return refuse(client, cbuf, out, BAD_GATEWAY).await,
        };
        let len = out.len();
        let (res, o) = up.stream.write_range(out, 0, len).await;
        out = o;
        // A reused connection the backend closed meanwhile fails here or at the first read:
        // retry once on a new one if the whole request is still in `out`.
        let retry = reused && body_left == 0 && attempt == 1;
        if res.is_err() {
            if retry {
                continue;
            }
            return refuse(client, cbuf, out, BAD_GATEWAY).await;
        }
        // The rest of the request body, streamed through the client buffer.
        while body_left > 0 {
            let (res, b) = client.read_more(cbuf).await;
            cbuf = b;
            match res {
                Ok(n) if n > 0 => {}
                _ => return (Ok(false), cbuf, out),
            }
            let n = cbuf.len().min(body_left);
            let (res, b) = up.stream.write_range(cbuf, 0, n).await;
            cbuf = b;
            if res.is_err() {
                return refuse(client, cbuf, out, BAD_GATEWAY).await;
            }
            consume(&mut cbuf, n);
            body_left -= n;
        }
        match read_response(&mut up, req.head_method).await {
            Ok(resp) => break (up, resp),
            Err(fresh) if fresh && retry => continue,
            Err(_) => return refuse(client, cbuf, out, BAD_GATEWAY).await,
        }
    };
    out.clear();

    // The response: what is buffered, then the rest of the body as it comes.
    let total = resp.head_len + resp.body_len;
    let now = up.buf.len().min(total);
    let (res, b) = client.write_range(up.buf, 0, now).await;
    up.buf = b;
    if let Err(e) = res {
        return (Err(e), cbuf, out);
    }
    let mut left = total - now;
    let reusable = up.buf.len() == now; // bytes after the response: the backend misbehaved
    while left > 0 {
        up.buf.clear();
        let (res, b) = up.stream.read_more(up.buf).await;
        up.buf = b;
        match res {
            Ok(n) if n > 0 => {}
            // Truncated response: the client cannot tell, so close it.
            _ => return (Ok(false), cbuf, out),
        }
        let n = up.buf.len().min(left);
        let (res, b) = client.write_range(up.buf, 0, n).await;
        up.buf = b;
        if let Err(e) = res {
            return (Err(e), cbuf, out);
        }
        left -= n;
    }
    if reusable && !resp.close {
        proxy.give_back(i, up);
    }
    (Ok(!req.close), cbuf, out)
}

/// Reads and parses the response head into `up.buf`. `Err(true)`: the connection ended before
/// any byte of a response (a stale keep-alive connection: retryable).
async fn read_response<S: Stream>(
    up: &mut Upstream<S>,
    head_method: bool,
) -> Result<ResponseHead, bool> {
    loop {
        let buf = std::mem::take(&mut up.buf);
        let (res, b) = up.stream.read_more(buf).await;
        up.buf = b;
        match res {
            Ok(0) | Err(_) => return Err(up.buf.is_empty()),
            Ok(_) => {}
        }
        match parse_response(&up.buf, head_method) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) if up.buf.len() == up.buf.capacity() => return Err(false),
            Ok(None) => {}
            Err(()) => return Err(false),
        }
    }
}

/// Answers `msg` and closes.
async fn refuse<S: Stream>(
    client: &mut S,
    cbuf: Vec<u8>,
    mut out: Vec<u8>,
    msg: &[u8],
) -> (io::Result<bool>, Vec<u8>, Vec<u8>) {
    out.clear();
    out.extend_from_slice(msg);
    let len = out.len();
    let (res, out) = client.write_range(out, 0, len).await;
    (res.map(|()| false), cbuf, out)
}

/// Drops the first `n` bytes of `buf`, keeping what follows (a pipelined request).
fn consume(buf: &mut Vec<u8>, n: usize) {
    if n == buf.len() {
        buf.clear();
    } else {
        buf.copy_within(n.., 0);
        buf.truncate(buf.len() - n);
    }
}

/// Parses a request head in `buf`; when complete, writes the head to send upstream into `out`
/// (hop-by-hop headers dropped, `X-Forwarded-For` appended to or added). `Ok(None)`: more
/// bytes needed. `Err`: malformed, or a body framing not supported here (chunked).
fn parse_request(buf: &[u8], ip: &str, out: &mut Vec<u8>) -> Result<Option<RequestHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(());
    };
    let mut close = version == 0;
    let mut body_len = 0;
    let mut xff = false;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            close = connection_close(h.value, close);
            continue;
        }
        if name.eq_ignore_ascii_case("keep-alive") || name.eq_ignore_ascii_case("proxy-connection")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
        if name.eq_ignore_ascii_case("content-length") {
            body_len = parse_len(h.value)?;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = true;
            out.extend_from_slice(b", ");
            out.extend_from_slice(ip.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !xff {
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let head_method = method == "HEAD";
    Ok(Some(RequestHead {
        head_len,
        body_len,
        close,
        head_method,
    }))
}

/// Parses a response head in `buf`. `Ok(None)`: more bytes needed. `Err`: malformed, 1xx, or
/// a body without Content-Length (chunked or until close), refused here.
fn parse_response(buf: &[u8], head_method: bool) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(());
    };
    let mut close = version == 0;
    let mut body_len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            close = connection_close(h.value, close);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(parse_len(h.value)?);
        }
    }
    let body_len = match (code, body_len) {
        (100..=199, _) => return Err(()),
        (204 | 304, _) => 0,
        _ if head_method => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(()),
    };
    Ok(Some(ResponseHead {
        head_len,
        body_len,
        close,
    }))
}

/// The connection's fate after a `Connection` header (`close` / `keep-alive` tokens).
fn connection_close(value: &[u8], default: bool) -> bool {
    let mut close = default;
    for token in value.split(|&b| b == b',') {
        let t = token.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            return true;
        }
        if t.eq_ignore_ascii_case(b"keep-alive") {
            close = false;
        }
    }
    close
}

fn parse_len(value: &[u8]) -> Result<usize, ()> {
    std::str::from_utf8(value.trim_ascii())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_gets_xff_and_loses_hop_by_hop() {
        let mut out = Vec::new();
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET";
        let r = parse_request(req, "10.0.0.1", &mut out).unwrap().unwrap();
        assert_eq!(r.head_len, req.len() - 3);
        assert!(!r.close);
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        );
        let req = b"GET / HTTP/1.0\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        let r = parse_request(req, "10.0.0.1", &mut out).unwrap().unwrap();
        assert!(r.close);
        assert!(out.ends_with(b"X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n"));
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost", "1", &mut out)
            .unwrap()
            .is_none());
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_request(chunked, "1", &mut out).is_err());
    }

    #[test]
    fn response_heads() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false);
        let r = r.unwrap().unwrap();
        assert_eq!((r.head_len, r.body_len, r.close), (38, 5, false));
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(r.unwrap().unwrap().body_len, 0);
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false).is_err());
        let r = parse_response(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n", false);
        assert!(r.unwrap().unwrap().close);
    }

    #[test]
    fn consume_keeps_the_rest() {
        let mut b = b"abcdef".to_vec();
        consume(&mut b, 4);
        assert_eq!(b, b"ef");
        consume(&mut b, 2);
        assert!(b.is_empty());
    }
}
