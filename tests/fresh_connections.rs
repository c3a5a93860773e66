//! New client connections are read and answered before tokio's reactor sees them
//! (`server/lazy_tcp.rs`): a connection whose request is there when it is accepted is never
//! registered with epoll, and one that has to wait is registered then. Through the real
//! program; which path a connection took is read from the kernel (`/proc/PID/fdinfo` of
//! autolb's epoll descriptors lists the sockets they watch), and `AUTOLB_ACCEPT=tokio` (the
//! accept that registers every socket) shows the check sees a registration.
//!
//! To make "the request is there when it is accepted" certain rather than likely, autolb is
//! stopped (SIGSTOP) while the client connects and sends, and continued after.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// `/hold` requests answered once the test adds a permit, and counted as they arrive.
type Gate = (Arc<Semaphore>, Arc<AtomicUsize>);

fn gate() -> Gate {
    (Arc::new(Semaphore::new(0)), Arc::default())
}

/// A backend answering `/hold` only once the test adds a permit (and `/big` with 32 MB).
async fn backend((gate, held): Gate) -> SocketAddr {
    common::hyper_backend(move |req| {
        let (gate, held) = (gate.clone(), held.clone());
        async move {
            let body = match req.uri().path() {
                "/hold" => {
                    held.fetch_add(1, Ordering::SeqCst);
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    Bytes::from_static(b"held")
                }
                "/big" => Bytes::from(vec![b'x'; BIG]),
                path => Bytes::from(format!("path {path}")),
            };
            http::Response::new(Full::new(body))
        }
    })
    .await
}

const BIG: usize = 32 << 20;

fn start(backend: SocketAddr, env: &[(&str, &str)]) -> common::Autolb {
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            common::backend_list(&[backend], "")
        ),
    );
    common::Autolb::start_with_env(&yaml, env)
}

/// Every thread of `pid` stopped (state `T`).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

/// autolb stopped until dropped.
struct Stopped(u32);

impl Stopped {
    async fn new(pid: u32) -> Stopped {
        // SAFETY: a signal to the child process this test started.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP");
        let stopped = Stopped(pid);
        common::wait_until(10, "autolb stopped", || async {
            all_stopped(pid).then_some(())
        })
        .await;
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: a signal to the child process this test started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.0 as i32, libc::SIGCONT);
        }
    }
}

/// Connect to `addr` and send `bytes` (then half-close if `half_close`) while autolb is
/// stopped: the request is in the socket when autolb accepts it.
async fn send_while_stopped(
    lb: &common::Autolb,
    addr: SocketAddr,
    bytes: &[u8],
    half_close: bool,
) -> TcpStream {
    let stopped = Stopped::new(lb.proc.pid()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("send");
    if half_close {
        s.shutdown().await.expect("half-close");
    }
    drop(stopped);
    s
}

/// autolb's descriptor for the client connection whose local port is `client_port`.
fn server_fd(pid: u32, listen_port: u16, client_port: u16) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && port(f[1]) == Some(listen_port) && port(f[2]) == Some(client_port))
            .then(|| f[9].to_string())
    })?;
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// The descriptors that some epoll set of `pid` watches.
fn epoll_watched(pid: u32) -> HashSet<i32> {
    let mut out = HashSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in fds.flatten() {
        let is_epoll =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("eventpoll"));
        let name = e.file_name();
        if !is_epoll {
            continue;
        }
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
        else {
            continue;
        };
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                if let Some(fd) = rest.split_whitespace().next().and_then(|t| t.parse().ok()) {
                    out.insert(fd);
                }
            }
        }
    }
    out
}

/// Whether autolb's end of `client` is watched by an epoll set (registered with tokio).
fn registered(lb: &common::Autolb, client: &TcpStream) -> Option<bool> {
    let pid = lb.proc.pid();
    let fd = server_fd(
        pid,
        lb.addr("web").port(),
        client.local_addr().expect("local").port(),
    )?;
    Some(epoll_watched(pid).contains(&fd))
}

/// Read until the server closes; the responses as text.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("server closed in time")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// Wait until the backend holds `/hold`'s request, then whether autolb's end of `client` is
/// registered, then let the answer go and read it.
async fn registered_while_held(
    lb: &common::Autolb,
    (gate, held): &Gate,
    client: &mut TcpStream,
) -> bool {
    // autolb accepted it and read the request (the gauge counts it; the socket is in the
    // kernel's table with autolb's descriptor): look while the backend holds the answer.
    let seen = common::wait_until(10, "autolb's end of the connection", || async {
        registered(lb, client)
    })
    .await;
    // Give autolb's worker every chance to register it if it were going to: the request is
    // at the backend (its answer held), so nothing is left for the client socket to do.
    common::wait_until(10, "the request at the backend", || async {
        (held.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    held.store(0, Ordering::SeqCst);
    let again = registered(lb, client).expect("still open");
    gate.add_permits(1);
    let text = read_to_close(client).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("held"), "{text}");
    seen || again
}

const HOLD_CLOSE: &[u8] = b"GET /hold HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_there_at_accept_is_served_without_registering_the_socket() {
    let g = gate();
    let b = backend(g.clone()).await;
    let lb = start(b, &[]);
    let mut c = send_while_stopped(&lb, lb.addr("web"), HOLD_CLOSE, false).await;
    assert!(
        !registered_while_held(&lb, &g, &mut c).await,
        "the socket of a connection whose request was there was registered with epoll"
    );
    common::wait_no_connections(&lb, "web").await;

    // The check sees a registration: tokio's accept registers every socket.
    let lb = start(b, &[("AUTOLB_ACCEPT", "tokio")]);
    let mut c = send_while_stopped(&lb, lb.addr("web"), HOLD_CLOSE, false).await;
    assert!(
        registered_while_held(&lb, &g, &mut c).await,
        "AUTOLB_ACCEPT=tokio: the socket should be registered"
    );
    common::wait_no_connections(&lb, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_a_half_close_on_a_fresh_connection() {
    let b = backend(gate()).await;
    let lb = start(b, &[]);
    let addr = lb.addr("web");
    // Three requests in one segment, there before the first read.
    let pipelined = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n\
GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut c = send_while_stopped(&lb, addr, pipelined, false).await;
    let text = read_to_close(&mut c).await;
    let bodies: Vec<&str> = text.matches("path /").collect();
    assert_eq!(bodies.len(), 3, "{text}");
    let (a, b_, c_) = (
        text.find("path /a").expect("a"),
        text.find("path /b").expect("b"),
        text.find("path /c").expect("c"),
    );
    assert!(a < b_ && b_ < c_, "in order: {text}");

    // A keep-alive request, then the client's FIN, both there before the first read: the
    // answer, then the connection closes.
    let req = b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut c = send_while_stopped(&lb, addr, req, true).await;
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("path /half"), "{text}");
    common::wait_no_connections(&lb, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_and_a_slow_reader_are_registered_when_they_make_autolb_wait() {
    let b = backend(gate()).await;
    let lb = start(b, &[]);
    let addr = lb.addr("web");

    // Connects, sends nothing: the first read would block, so the socket is registered
    // and its request, sent later, is read when the reactor says so.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    common::wait_until(10, "the silent connection registered", || async {
        registered(&lb, &c).filter(|r| *r)
    })
    .await;
    c.write_all(b"GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let text = read_to_close(&mut c).await;
    assert!(text.ends_with("path /later"), "{text}");

    // 32 MB to a client that reads nothing at first: a write would block (more than the
    // two socket buffers hold), the socket is registered, and every byte arrives once the
    // client reads.
    let req = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut c = send_while_stopped(&lb, addr, req, false).await;
    common::wait_until(20, "the slow reader registered", || async {
        registered(&lb, &c).filter(|r| *r)
    })
    .await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got))
        .await
        .expect("the whole response in time")
        .expect("read");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(got.len() - head_end, BIG);
    assert!(got[head_end..].iter().all(|&x| x == b'x'));
    common::wait_no_connections(&lb, "web").await;
}
