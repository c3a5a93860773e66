//! The minimum request-body rate (`limits: {body_timeout, min_body_rate}`) through the real
//! autolb: a client trickling its body gets 408 (`Connection: close`) after the grace, the
//! backend sees an aborted request and counts no failure; a fast client whose backend reads
//! slowly (backpressure) is not cut.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{backend_list, config, Autolb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the recording backend saw of one request.
#[derive(Default)]
struct Seen {
    /// Body bytes received.
    body: AtomicUsize,
    /// The whole declared body arrived.
    complete: AtomicBool,
    /// autolb closed the connection.
    closed: AtomicBool,
}

/// A raw backend that reads a request with a Content-Length body (`chunk` bytes per read,
/// `pause` between reads), recording what it got; it answers 200 once the body is complete.
async fn recording_backend(chunk: usize, pause: Duration) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let addr = common::raw_backend(move |mut stream: TcpStream| {
        let seen = s.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = vec![0u8; chunk];
            let mut declared = None;
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                match declared {
                    None => {
                        head.extend_from_slice(&buf[..n]);
                        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                        declared = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        seen.body.fetch_add(head.len() - end - 4, Ordering::SeqCst);
                    }
                    Some(_) => {
                        seen.body.fetch_add(n, Ordering::SeqCst);
                    }
                }
                if declared.is_some_and(|d| seen.body.load(Ordering::SeqCst) >= d) {
                    seen.complete.store(true, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
                tokio::time::sleep(pause).await;
            }
            seen.closed.store(true, Ordering::SeqCst);
        }
    })
    .await;
    (addr, seen)
}

fn start(limits: &str, backend: SocketAddr) -> Autolb {
    Autolb::start(&config(
        2,
        &format!(", limits: {{ {limits} }}"),
        &format!(
            "pools:\n  web:\n    outlier: {{ consecutive_failures: 1, ejection: 60s }}\n    backends:\n{}",
            backend_list(&[backend], "")
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_gets_408_and_the_backend_an_aborted_request() {
    let (backend, seen) = recording_backend(64 * 1024, Duration::ZERO).await;
    let lb = start("body_timeout: 300ms, min_body_rate: 10KiB/s", backend);
    let started = Instant::now();
    let stream = TcpStream::connect(lb.addr("web")).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("write head");
    let answered = Arc::new(AtomicBool::new(false));
    let stop = answered.clone();
    // 10 bytes every 100 ms (100 bytes/s, far below 10 KiB/s) until autolb answers.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if stop.load(Ordering::SeqCst) || wr.write_all(b"0123456789").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    while let Ok(Ok(n)) = tokio::time::timeout(deadline, rd.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answered.store(true, Ordering::SeqCst);
        out.extend_from_slice(&buf[..n]);
    }
    answered.store(true, Ordering::SeqCst);
    let _ = trickle.await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("request body too slow"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within 10 s"
    );
    // The backend's request is aborted: the connection closes before the body is complete.
    common::wait_until(10, "the backend connection to close", || {
        let closed = seen.closed.load(Ordering::SeqCst);
        async move { closed.then_some(()) }
    })
    .await;
    assert!(!seen.complete.load(Ordering::SeqCst));
    assert!(seen.body.load(Ordering::SeqCst) < 100_000);
    // The client's slowness is no backend failure: nothing counted, nothing ejected.
    let status = common::get(lb.admin, "/loadbalancer/status").await.json();
    let b = &status["pools"][0]["backends"][0];
    assert_eq!(b["failures"], 0, "{b}");
    assert_eq!(b["ejections"], 0, "{b}");
    assert_eq!(b["health"], "up", "{b}");
    assert!(lb.proc.log().contains("request body too slow: 408"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_held_back_by_a_slow_backend_is_not_cut() {
    // The backend takes 64 KiB every 50 ms (~1.3 MB/s): far below min_body_rate in wall-clock
    // time, but autolb never waits for the client, only for the backend.
    let (backend, seen) = recording_backend(64 * 1024, Duration::from_millis(50)).await;
    let lb = start("body_timeout: 300ms, min_body_rate: 8MiB/s", backend);
    let size = 4 << 20;
    let mut s = TcpStream::connect(lb.addr("web")).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&vec![b'x'; size]).await.expect("write body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(seen.complete.load(Ordering::SeqCst));
    assert_eq!(seen.body.load(Ordering::SeqCst), size);
}
