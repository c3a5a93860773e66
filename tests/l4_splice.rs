//! L4 byte moving through a real autolb, with `splice(2)` (the default) and with the
//! userspace copy (`AUTOLB_L4_SPLICE=off`): megabytes both ways at once, byte-exact, with a
//! half-close in the middle, twice on one autolb (the second connection reuses the first
//! one's pipes, kept empty by the worker); the byte counters exact; clients that reset
//! mid-transfer, either way, free the backend connection and leave autolb serving.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{get, Autolb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(60);
const UP: usize = 12 << 20;
const DOWN: usize = 16 << 20;

/// The `i`th byte of stream `seed`: not periodic over a pipe's or a buffer's size.
fn pattern(seed: u64, i: usize) -> u8 {
    let i = i as u64;
    ((i * 7 + i / 4093 + seed * 101) % 251) as u8
}

fn fill(seed: u64, from: usize, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, from + k);
    }
}

/// Write `len` bytes of stream `seed`.
async fn send_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: usize) -> bool {
    let mut buf = vec![0u8; 64 * 1024 + 17];
    let mut sent = 0;
    while sent < len {
        let n = buf.len().min(len - sent);
        fill(seed, sent, &mut buf[..n]);
        if w.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        sent += n;
    }
    true
}

/// What `read_pattern` saw.
struct Seen {
    /// Bytes read, from `from` on.
    total: usize,
    /// How many of the first `len` bytes matched the stream, from its start.
    good: usize,
    /// The bytes past `len`.
    tail: Vec<u8>,
}

/// Read until EOF, the bytes from offset `from` of stream `seed`, `len` of them, then
/// whatever follows (kept in `tail`, at most 64 bytes).
async fn read_pattern<R: AsyncReadExt + Unpin>(
    r: &mut R,
    seed: u64,
    from: usize,
    len: usize,
) -> Seen {
    let mut buf = vec![0u8; 50_000];
    let mut seen = Seen {
        total: 0,
        good: 0,
        tail: Vec::new(),
    };
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            let at = from + seen.total;
            if at < len {
                if b == pattern(seed, at) && seen.good == at - from {
                    seen.good += 1;
                }
            } else if seen.tail.len() < 64 {
                seen.tail.push(b);
            }
            seen.total += 1;
        }
    }
}

/// A backend that sends `DOWN` bytes of stream 2 while it reads the client's stream 1 to
/// its EOF, then answers (after the client's half-close) with the count of bytes it read
/// that matched (when exactly `UP` came), 8 bytes big-endian, and closes.
async fn pattern_backend() -> SocketAddr {
    common::raw_backend(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let (sent, seen) = tokio::join!(
            send_pattern(&mut w, 2, DOWN),
            read_pattern(&mut r, 1, 0, UP)
        );
        // The matching bytes when exactly UP came, else a count no test expects.
        let answer = match seen.total == UP {
            true => seen.good as u64,
            false => u64::MAX,
        };
        if sent {
            let _ = w.write_all(&answer.to_be_bytes()).await;
            let _ = w.shutdown().await;
        }
    })
    .await
}

fn config(backend: SocketAddr) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: db, listen: \"127.0.0.1:0\", protocol: tcp, pool: db }}
pools:
  db:
    timeouts: {{ connect: 1s, idle: 30s }}
    backends:
      - {{ address: \"{backend}\" }}
"
    )
}

/// autolb's open pipes (`/proc/PID/fd` links to `pipe:[...]`): its stdout and stderr
/// are pipes to this test, so compare against a count taken before.
fn pipes(lb: &Autolb) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", lb.proc.pid())) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// One connection: `UP` bytes up and `DOWN` down at once, then a half-close and the
/// backend's verdict; checks every byte, and that at most `pipes_most` pipe descriptors
/// were open in autolb meanwhile (looked at every 2 ms), that many at some point.
async fn transfer(lb: &Autolb, pipes_most: usize, what: &str) {
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let mut first = [0u8; 1];
    tokio::time::timeout(T, s.read_exact(&mut first))
        .await
        .expect("first byte in time")
        .expect("first byte");
    assert_eq!(first[0], pattern(2, 0));
    let (mut r, mut w) = s.split();
    let upload = async {
        assert!(send_pattern(&mut w, 1, UP).await, "upload");
        // Half-close: the backend answers only after this, through the other direction.
        w.shutdown().await.expect("half-close");
    };
    let work = tokio::time::timeout(T, async {
        tokio::join!(upload, read_pattern(&mut r, 2, 1, DOWN))
    });
    tokio::pin!(work);
    let mut most = pipes(lb);
    let ((), seen) = loop {
        tokio::select! {
            done = &mut work => break done.expect("transfer in time"),
            _ = tokio::time::sleep(Duration::from_millis(2)) => most = most.max(pipes(lb)),
        }
    };
    assert_eq!(most, pipes_most, "{what}: autolb's pipes while it moved");
    assert_eq!(seen.good, DOWN - 1, "{what}: download byte-exact");
    assert_eq!(seen.total, DOWN - 1 + 8, "{what}: nothing more");
    let got = u64::from_be_bytes(seen.tail[..8].try_into().expect("8 bytes"));
    assert_eq!(got, UP as u64, "{what}: upload byte-exact");
}

async fn both_ways(splice: bool) {
    let backend = pattern_backend().await;
    let env: &[(&str, &str)] = if splice {
        &[]
    } else {
        &[("AUTOLB_L4_SPLICE", "off")]
    };
    let lb = Autolb::start_with_env(&config(backend), env);
    let before = pipes(&lb);
    // One pipe per direction (two descriptors each) when splicing, none when copying.
    // A bulk transfer: both directions fill their buffer at once and go on spliced.
    let own = if splice { 4 } else { 0 };
    transfer(&lb, before + own, &format!("splice {splice}, first")).await;
    // Both directions ended at EOF, drained: the worker keeps the two pipes, empty...
    common::wait_until(10, "the connection closed", || async {
        (backend_tcp(&lb).await["open_connections"] == 0).then_some(())
    })
    .await;
    assert_eq!(pipes(&lb), before + own, "splice {splice}: pipes kept");
    // ... and the next connection moves its bytes through them (no new pipe), exactly its
    // own bytes: a pipe reused holds nothing of the last connection.
    transfer(&lb, before + own, &format!("splice {splice}, second")).await;
    // Counted exactly, on the listener and on the backend (once the last write is counted).
    let (up, down) = (2 * UP as u64, 2 * (DOWN + 8) as u64);
    let backend_in = format!(
        "autolb_tcp_backend_bytes_total{{pool=\"db\",backend=\"{backend}\",direction=\"in\"}}"
    );
    let backend_out = backend_in.replace("\"in\"", "\"out\"");
    let listener_in = "autolb_tcp_bytes_total{listener=\"db\",direction=\"in\"}";
    let listener_out = "autolb_tcp_bytes_total{listener=\"db\",direction=\"out\"}";
    common::wait_until(10, "exact byte counters", || async {
        let text = get(lb.admin, "/metrics").await.text();
        let exact = metric(&text, listener_in) == Some(up)
            && metric(&text, listener_out) == Some(down)
            && metric(&text, &backend_in) == Some(up)
            && metric(&text, &backend_out) == Some(down);
        exact.then_some(())
    })
    .await;
}

#[tokio::test]
async fn megabytes_both_ways_byte_exact_and_counted_with_splice() {
    both_ways(true).await;
}

#[tokio::test]
async fn megabytes_both_ways_byte_exact_and_counted_when_copying() {
    both_ways(false).await;
}

/// Reset `s` (SO_LINGER 0, then close: an RST, not a FIN).
fn reset(s: TcpStream) {
    let std = s.into_std().expect("std socket");
    socket2::SockRef::from(&std)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(std);
}

/// The backend's TCP counters in `/loadbalancer/status`.
async fn backend_tcp(lb: &Autolb) -> serde_json::Value {
    let st = get(lb.admin, "/loadbalancer/status").await.json();
    st["pools"][0]["backends"][0]["tcp"].clone()
}

/// A client resets mid-transfer (downloading, then uploading): autolb closes the backend
/// side, counts no backend error, holds no connection, and serves the next client.
#[tokio::test]
async fn client_reset_mid_transfer_frees_the_backend_connection() {
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    // Streams without end until its client goes away; reads whatever comes meanwhile.
    let backend = common::raw_backend(move |mut s: TcpStream| {
        let ended_tx = ended_tx.clone();
        async move {
            let (mut r, mut w) = s.split();
            let out = vec![5u8; 64 * 1024];
            let mut inb = vec![0u8; 64 * 1024];
            let how = tokio::select! {
                _ = async { while w.write_all(&out).await.is_ok() {} } => "write failed",
                _ = async { while r.read(&mut inb).await.is_ok_and(|n| n > 0) {} } => "read ended",
            };
            let _ = ended_tx.send(how);
        }
    })
    .await;
    let lb = Autolb::start(&config(backend));
    // Downloading: read 4 MB of the endless stream, then reset.
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < 4 << 20 {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("download in time")
            .expect("download");
        assert!(n > 0, "closed early");
        read += n;
    }
    reset(s);
    let how = tokio::time::timeout(T, ended.recv())
        .await
        .expect("backend connection closed in time");
    assert!(how.is_some());
    // Uploading: 4 MB into the backend (which reads while it writes), then reset.
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let chunk = vec![9u8; 64 * 1024];
    for _ in 0..64 {
        tokio::time::timeout(T, s.write_all(&chunk))
            .await
            .expect("upload in time")
            .expect("upload");
    }
    reset(s);
    let how = tokio::time::timeout(T, ended.recv())
        .await
        .expect("backend connection closed in time");
    assert!(how.is_some());
    let tcp = common::wait_until(10, "no open connection", || async {
        let tcp = backend_tcp(&lb).await;
        (tcp["open_connections"] == 0).then_some(tcp)
    })
    .await;
    assert_eq!(
        tcp["errors"], 0,
        "a client's reset is not the backend's error: {tcp}"
    );
    assert_eq!(tcp["connections_total"], 2, "{tcp}");
    // Still serving.
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    assert!(n > 0);
}

/// Small exchanges never fill the copy buffer: no pipe is made for them.
#[tokio::test]
async fn small_exchanges_cost_no_pipe() {
    let backend = common::raw_backend(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let lb = Autolb::start(&config(backend));
    let before = pipes(&lb);
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let mut buf = [0u8; 512];
    for i in 0..50u8 {
        let msg = [i; 512];
        s.write_all(&msg).await.expect("write");
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(buf, msg);
    }
    assert_eq!(pipes(&lb), before, "a pipe for small exchanges");
}
