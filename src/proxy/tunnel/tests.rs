//! Unit tests of the tunnel over in-memory pipes: pass-through, EOF, and Close frames put
//! between frames (never inside one), on drain and on idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

use super::*;

/// An unmasked binary frame (as a server sends) of `len` bytes of `fill`.
fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0x82];
    if len < 126 {
        f.push(len as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    f.extend(std::iter::repeat_n(fill, len));
    f
}

struct Ends {
    /// The client application's end and the backend application's end.
    client: DuplexStream,
    backend: DuplexStream,
    close: Arc<Notify>,
    done: tokio::task::JoinHandle<End>,
}

fn tunnel(idle: Duration) -> Ends {
    let (client, client_proxy) = duplex(1 << 16);
    let (backend, backend_proxy) = duplex(1 << 16);
    let close = Arc::new(Notify::new());
    let trigger = close.clone();
    let done = tokio::spawn(async move {
        let mut t = Tunnel::new(client_proxy, backend_proxy, idle);
        let notified = trigger.notified();
        tokio::pin!(notified);
        std::future::poll_fn(|cx| {
            if !t.is_closing() && notified.as_mut().poll(cx).is_ready() {
                t.close(CloseReason::Drain);
            }
            t.poll_run(cx)
        })
        .await
    });
    Ends {
        client,
        backend,
        close,
        done,
    }
}

async fn read_exact(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
        .await
        .expect("bytes within 30s")
        .expect("read");
    buf
}

/// Decode a Close frame at the start of `bytes`: (code, reason, masked, frame length).
fn parse_close(bytes: &[u8]) -> (u16, String, bool, usize) {
    assert_eq!(bytes[0], 0x88, "a final Close frame");
    let masked = bytes[1] & 0x80 != 0;
    let len = (bytes[1] & 0x7f) as usize;
    let (key, start) = if masked {
        (bytes[2..6].to_vec(), 6)
    } else {
        (vec![0; 4], 2)
    };
    let payload: Vec<u8> = bytes[start..start + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8(payload[2..].to_vec()).expect("utf-8");
    (code, reason, masked, start + len)
}

#[tokio::test]
async fn bytes_pass_both_ways_and_eof_ends_it() {
    let mut t = tunnel(Duration::from_secs(60));
    t.client.write_all(b"hello backend").await.expect("write");
    assert_eq!(read_exact(&mut t.backend, 13).await, b"hello backend");
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let mut backend = t.backend;
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        backend.write_all(&sent).await.expect("write");
        backend
    });
    assert_eq!(read_exact(&mut t.client, big.len()).await, big);
    let mut backend = writer.await.expect("writer");
    // The client leaves: the backend sees the end, and once it leaves too the tunnel ends.
    t.client.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    backend.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    drop(backend);
    let end = tokio::time::timeout(Duration::from_secs(5), t.done)
        .await
        .expect("ends")
        .expect("task");
    assert!(matches!(end, End::Closed), "{end:?}");
}

#[tokio::test]
async fn drain_closes_between_frames_and_waits_for_the_replies() {
    let mut t = tunnel(Duration::from_secs(60));
    let whole = frame(1000, 7);
    // The backend is in the middle of a frame when the drain is over.
    t.backend.write_all(&whole[..300]).await.expect("write");
    assert_eq!(read_exact(&mut t.client, 300).await, whole[..300]);
    t.close.notify_one();
    // Towards the backend (at a boundary already): a masked 1001 at once.
    let to_backend = read_exact(&mut t.backend, 2 + 4 + 12).await;
    assert_eq!(
        parse_close(&to_backend),
        (1001, "going away".into(), true, 18)
    );
    // Towards the client: the rest of the frame first, then the Close; later frames of
    // the backend are not forwarded.
    t.backend.write_all(&whole[300..]).await.expect("write");
    t.backend.write_all(&frame(5, 9)).await.expect("write");
    assert_eq!(
        read_exact(&mut t.client, whole.len() - 300).await,
        whole[300..]
    );
    let to_client = read_exact(&mut t.client, 2 + 12).await;
    assert_eq!(
        parse_close(&to_client),
        (1001, "going away".into(), false, 14)
    );
    // Both peers answer with their Close: the tunnel finishes cleanly.
    t.client
        .write_all(&super::ws_frames::close_frame(1001, "", true))
        .await
        .expect("write");
    t.backend
        .write_all(&super::ws_frames::close_frame(1001, "", false))
        .await
        .expect("write");
    let end = tokio::time::timeout(Duration::from_secs(5), t.done)
        .await
        .expect("ends")
        .expect("task");
    assert!(matches!(end, End::Closed), "{end:?}");
    // Nothing after our Close reached the client.
    let mut rest = Vec::new();
    t.client.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test(start_paused = true)]
async fn a_frame_that_never_ends_is_abandoned_after_the_grace() {
    let mut t = tunnel(Duration::from_secs(60));
    let whole = frame(1000, 1);
    t.backend.write_all(&whole[..10]).await.expect("write");
    assert_eq!(read_exact(&mut t.client, 10).await, whole[..10]);
    t.close.notify_one();
    let end = tokio::time::timeout(CLOSE_GRACE * 2, t.done)
        .await
        .expect("ends")
        .expect("task");
    assert!(matches!(end, End::Abandoned), "{end:?}");
}

#[tokio::test(start_paused = true)]
async fn silence_closes_with_1001_but_traffic_keeps_it_open() {
    let mut t = tunnel(Duration::from_secs(10));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        t.client.write_all(b"\x81\x80abcd").await.expect("write");
        assert_eq!(read_exact(&mut t.backend, 6).await, b"\x81\x80abcd");
    }
    let before = tokio::time::Instant::now();
    let to_client = read_exact(&mut t.client, 2 + 14).await;
    let waited = before.elapsed();
    assert_eq!(
        parse_close(&to_client),
        (1001, "idle timeout".into(), false, 16)
    );
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_second_close_goes_where_one_already_went() {
    let mut t = tunnel(Duration::from_secs(60));
    // The client starts closing; the drain comes before the backend replies.
    let client_close = super::ws_frames::close_frame(1000, "bye", true);
    t.client.write_all(&client_close).await.expect("write");
    assert_eq!(
        read_exact(&mut t.backend, client_close.len()).await,
        client_close
    );
    t.close.notify_one();
    // The client gets our 1001 as the reply (the backend's own is dropped) ...
    let to_client = read_exact(&mut t.client, 14).await;
    assert_eq!(parse_close(&to_client).0, 1001);
    // ... and the backend no second Close: it only sees the end once the client leaves.
    t.backend
        .write_all(&super::ws_frames::close_frame(1000, "", false))
        .await
        .expect("write");
    drop(t.client);
    let mut rest = Vec::new();
    t.backend.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "{rest:?}");
    let end = t.done.await.expect("task");
    assert!(matches!(end, End::Closed | End::Error(_)), "{end:?}");
}
