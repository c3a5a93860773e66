//! What a slow reader costs, through the real program: 40 clients start a 100 MiB download
//! each and then stop reading. autolb holds at most `limits.response_buffer` (64 KiB by
//! default: reads from the backend of half of it) plus hyper's write queue per stream, not
//! the 256 KiB reads it used to pin (about 515 KiB a slow reader before; about 120 KiB
//! now, connection costs included).

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::{echo, Autolb};

const READERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_little_memory() {
    let e = echo("big");
    let lb = Autolb::start(&format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web: {{ backends: [ {{ address: \"{}\" }} ] }}
",
        e.addr
    ));
    let web = lb.addr("web");
    // Warm up: one complete download, so that what is measured is the streams alone.
    let mut warm = common::Client::connect(web).await;
    assert_eq!(warm.get("/bytes/1048576").await.status, 200);
    drop(warm);
    let before = lb.rss_kib();

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = socket.connect(web).await.expect("connect");
        s.write_all(b"GET /bytes/104857600 HTTP/1.1\r\nHost: big\r\n\r\n")
            .await
            .expect("request");
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).await.expect("first bytes");
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&first[..n])
        );
        readers.push(s);
    }
    // Every stream fills the socket buffers and stalls; wait until autolb's memory stops
    // growing (bounded: 20 s).
    let mut last = lb.rss_kib();
    let mut stable = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = lb.rss_kib();
        stable = if now.abs_diff(last) <= last / 200 {
            stable + 1
        } else {
            0
        };
        last = now;
        if stable >= 3 {
            break;
        }
    }
    let per_reader = last.saturating_sub(before) / READERS as u64;
    eprintln!("RSS {before} KiB -> {last} KiB: {per_reader} KiB per slow reader");
    assert!(
        per_reader < 300,
        "a slow reader costs {per_reader} KiB (RSS {before} -> {last} KiB)"
    );
    drop(readers);
}
