//! Shared by `upstream_client.rs` and `upstream_client_framing.rs`: scripted raw-TCP backends
//! that answer exact bytes (so that response framing is under the test's control) and count
//! their accepted connections, and a keep-alive client that reports an aborted body instead
//! of panicking.
// Each test crate uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{backend_list, config, raw_backend, Autolb};

/// autolb's own HTTP/1.1 client (the default), named explicitly against an inherited env.
pub const OWN: &[(&str, &str)] = &[("AUTOLB_UPSTREAM_CLIENT", "own")];
/// hyper's client for every request.
pub const HYPER: &[(&str, &str)] = &[("AUTOLB_UPSTREAM_CLIENT", "hyper")];

/// autolb with one worker and pool `web` of the single backend `backend`; `pool_extra` are
/// indented pool lines (e.g. "    retries: 0\n").
pub fn start(backend: SocketAddr, pool_extra: &str, env: &[(&str, &str)]) -> Autolb {
    let list = backend_list(&[backend], "");
    let yaml = config(
        1,
        "",
        &format!("pools:\n  web:\n{pool_extra}    backends:\n{list}"),
    );
    Autolb::start_with_env(&yaml, env)
}

/// One request head as the backend received it.
#[derive(Debug, Clone)]
pub struct Req {
    /// Backend connection number (0 = first accepted).
    pub conn: usize,
    /// Requests before this one on the same connection.
    pub nth: usize,
    pub head: String,
}

impl Req {
    pub fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

/// A step of an answer.
pub enum Step {
    Write(Vec<u8>),
    Sleep(u64),
}

/// What the backend does with a request.
pub enum Act {
    /// Write these bytes and wait for the next request on the connection.
    Send(Vec<u8>),
    /// Write these bytes (possibly none) and close the connection.
    Close(Vec<u8>),
    /// Run the steps, then close the connection (`true`) or wait for the next request.
    Steps(Vec<Step>, bool),
    /// Write these bytes and then stay silent until the peer closes (at most 30 s).
    Hang(Vec<u8>),
}

/// `bytes` written one byte at a time, `ms` apart.
pub fn trickle(bytes: &[u8], ms: u64) -> Vec<Step> {
    bytes
        .iter()
        .flat_map(|&b| [Step::Write(vec![b]), Step::Sleep(ms)])
        .collect()
}

/// `HTTP/1.1 200 OK` with a Content-Length body and `extra` header lines ("X: y\r\n").
pub fn ok(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

type Script = dyn Fn(&Req) -> Act + Send + Sync;

/// A backend that reads request heads and answers each as `script` says, recording every
/// head and counting accepted connections.
pub struct Backend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Backend {
    pub async fn start(script: impl Fn(&Req) -> Act + Send + Sync + 'static) -> Backend {
        let script: Arc<Script> = Arc::new(script);
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepts.clone(), seen.clone());
        let addr = raw_backend(move |stream| {
            let conn = a.fetch_add(1, Ordering::SeqCst);
            serve(stream, conn, script.clone(), s.clone())
        })
        .await;
        Backend {
            addr,
            accepts,
            seen,
        }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Every request head received so far, in order.
    pub fn seen(&self) -> Vec<Req> {
        self.seen.lock().expect("seen").clone()
    }

    /// The received requests whose request line starts with `line` (e.g. "POST /p ").
    pub fn seen_like(&self, line: &str) -> Vec<Req> {
        let seen = self.seen();
        seen.into_iter()
            .filter(|r| r.head.starts_with(line))
            .collect()
    }
}

async fn serve(mut s: TcpStream, conn: usize, script: Arc<Script>, seen: Arc<Mutex<Vec<Req>>>) {
    let _ = s.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded by the connection: every round reads at least one head or returns.
    for nth in 0.. {
        let head = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = pending.drain(..end + 4).collect();
                break String::from_utf8_lossy(&head).into_owned();
            }
            if pending.len() > 1 << 20 {
                return;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let req = Req { conn, nth, head };
        seen.lock().expect("seen").push(req.clone());
        let (steps, close) = match script(&req) {
            Act::Send(b) => (vec![Step::Write(b)], false),
            Act::Close(b) => (vec![Step::Write(b)], true),
            Act::Steps(steps, close) => (steps, close),
            Act::Hang(b) => {
                let _ = s.write_all(&b).await;
                let until_eof = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_secs(30), until_eof).await;
                return;
            }
        };
        for step in steps {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        }
        if close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// A response as the client of autolb saw it: the head, and the body or why it broke off.
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body of a cleanly complete response; panics on an aborted one.
    pub fn body(&self) -> &[u8] {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("status {} with an aborted body: {e}", self.status),
        }
    }
}

/// A keep-alive HTTP/1.1 client connection to autolb.
pub struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { tx }
    }

    /// A bodiless request; `Err` when no response head came (the connection broke). The
    /// whole exchange must end within 10 s.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.send_body(method, path, headers, b"").await
    }

    /// A request with `body` (Content-Length), as `send`.
    pub async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Result<Reply, String> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test.example");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        let exchange = async {
            self.tx.ready().await.map_err(|e| e.to_string())?;
            let resp = self.tx.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string());
            Ok(Reply {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no complete exchange within 10s"))
    }

    /// A GET that must get a response head.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// FNV-1a, 64 bits: a checksum of large bodies.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` deterministic pseudo-random bytes (xorshift), every byte value present.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
