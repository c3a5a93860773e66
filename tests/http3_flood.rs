//! QUIC under a flood of Initial packets, through the real `autolb`: genuine Initials of
//! fresh connections (quinn-proto's client state machine, each with its own connection ID)
//! sent from one address and many source ports (each its own UDP socket, as spoofed
//! sources look on loopback) and never answered. Past half of `quic.max_handshakes` in
//! progress, autolb answers with Retry (no state kept for the unproven address), and a real
//! HTTP/3 client (h3 over quinn) that proves its address is still served meanwhile.

mod common;
mod http3_support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use common::echo;
use common::tls::{eventually, metric};
use http3_support::{client, client_config, connect, request, start};

/// Initial packets in the flood.
const FLOOD: usize = 600;
/// `quic.max_handshakes` for the test: Retry starts at 8 handshakes in progress.
const MAX_HANDSHAKES: usize = 16;

/// Sends `count` Initials of new connections to `addr`, each from a new socket; returns the
/// sockets (to read what came back).
fn flood(addr: SocketAddr, config: &quinn::ClientConfig, count: usize) -> Vec<UdpSocket> {
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut sockets = Vec::with_capacity(count);
    let mut buf = Vec::new();
    for _ in 0..count {
        let (_, mut conn) = endpoint
            .connect(Instant::now(), config.clone(), addr, "a.test")
            .expect("connect");
        buf.clear();
        let t = conn
            .poll_transmit(Instant::now(), 1, &mut buf)
            .expect("a client Initial");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        socket.send_to(&buf[..t.size], addr).expect("send");
        sockets.push(socket);
    }
    sockets
}

/// Whether a datagram is a QUIC v1 Retry (long header, type 3).
fn is_retry(d: &[u8]) -> bool {
    d.len() > 5 && d[0] & 0x80 != 0 && (d[0] & 0x30) >> 4 == 3 && d[1..5] == [0, 0, 0, 1]
}

/// How many of `sockets` received a Retry.
fn retries_received(sockets: &[UdpSocket]) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    for s in sockets {
        while let Ok(len) = s.recv(&mut buf) {
            if is_retry(&buf[..len]) {
                n += 1;
                break;
            }
        }
    }
    n
}

async fn count(lb: &common::Autolb, result: &str) -> u64 {
    metric(
        lb,
        &format!(
            "autolb_quic_handshakes_total{{listener=\"secure\",version=\"1\",result=\"{result}\"}}"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_flood_gets_retry_and_a_real_client_is_still_served() {
    let e = echo("e");
    let s = start(
        &[e.addr],
        &format!("    quic: {{ max_handshakes: {MAX_HANDSHAKES} }}\n"),
    );
    let addr = s.lb.addr("secure");
    // Before the flood: served at once, no Retry (the default `retry: auto`).
    let endpoint = client(&s.ca, false);
    let mut c = connect(&endpoint, addr, "a.test").await;
    let answer = request(&mut c.send, "GET", "https://a.test/", b"")
        .await
        .expect("GET before the flood");
    assert_eq!(answer.status, 200);
    assert_eq!(count(&s.lb, "retry").await, 0);
    assert_eq!(count(&s.lb, "completed").await, 1);

    let config = client_config(&s.ca, false);
    let sockets = tokio::task::spawn_blocking(move || flood(addr, &config, FLOOD))
        .await
        .expect("flood");
    // Half-open handshakes (never answered) hold at most half of max_handshakes; every
    // later attempt from an unproven address got a Retry and cost autolb no state. quinn
    // itself drops Initials its queue of 16 cannot take, so not all 600 arrive: a third
    // is an honest floor on a loaded machine.
    let retried = eventually(30, || async {
        count(&s.lb, "retry").await >= (FLOOD / 3) as u64
    })
    .await;
    assert!(
        retried,
        "Retry sent {} times for {FLOOD} flood Initials\n{}",
        count(&s.lb, "retry").await,
        s.lb.proc.log()
    );
    let received = retries_received(&sockets);
    assert!(
        received >= FLOOD / 3,
        "{received} flood sockets received a Retry"
    );

    // While those half-open handshakes are pending (10 s), a real client on new
    // connections goes through a Retry round trip and is served; the connection opened
    // before the flood goes on serving too.
    let start_retry = count(&s.lb, "retry").await;
    for i in 0..3 {
        let endpoint = client(&s.ca, false);
        let mut fresh = connect(&endpoint, addr, "a.test").await;
        let answer = request(
            &mut fresh.send,
            "GET",
            &format!("https://a.test/echo?n={i}"),
            b"",
        )
        .await
        .expect("GET during the flood");
        assert_eq!(answer.status, 200);
    }
    let answer = request(&mut c.send, "GET", "https://a.test/", b"")
        .await
        .expect("GET on the old connection");
    assert_eq!(answer.status, 200);
    assert_eq!(count(&s.lb, "refused").await, 0, "{}", s.lb.proc.log());
    assert!(count(&s.lb, "completed").await >= 4);
    eprintln!(
        "retry: {} for the flood, {} for the real clients; {} flood sockets saw a Retry",
        start_retry,
        count(&s.lb, "retry").await - start_retry,
        received
    );
    // The half-open handshakes time out and are counted as failed.
    let expired = eventually(40, || async { count(&s.lb, "failed").await >= 1 }).await;
    assert!(expired, "half-open handshakes never counted as failed");
}
