//! Bodies stream through autolb: 100 MB up and 100 MB down without autolb's memory growing
//! by more than 20 MB.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use common::{echo, Autolb};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A request body of `left` bytes in 64 KiB chunks of one shared buffer, with or without a
/// declared length (chunked when not).
struct Upload {
    chunk: Bytes,
    left: u64,
    sized: bool,
}

impl Body for Upload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.sized {
            http_body::SizeHint::with_exact(self.left)
        } else {
            http_body::SizeHint::default()
        }
    }
}

async fn upload(addr: std::net::SocketAddr, sized: bool) -> serde_json::Value {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let body = Upload {
        chunk: Bytes::from(vec![b'x'; CHUNK]),
        left: SIZE,
        sized,
    };
    let req = http::Request::post("/echo")
        .header("host", "upload.test")
        .body(body)
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("json")
}

async fn download(addr: std::net::SocketAddr) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("/bytes/{SIZE}"))
        .header("host", "download.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            total += data.len() as u64;
        }
    }
    total
}

#[tokio::test]
async fn hundred_megabytes_stream_both_ways_in_bounded_memory() {
    let e = echo("big");
    let list = common::backend_list(&[e.addr], "");
    let lb = Autolb::start(&common::config(
        1,
        "",
        &format!("pools:\n  web:\n    backends:\n{list}"),
    ));
    let addr = lb.addr("web");
    // Warm up: one small request of each kind so steady-state buffers exist.
    assert_eq!(common::get(addr, "/bytes/1000").await.body.len(), 1000);
    let before = lb.rss_kib();

    let sized = upload(addr, true).await;
    assert_eq!(sized["body_length"], SIZE);
    let chunked = upload(addr, false).await;
    assert_eq!(chunked["body_length"], SIZE);
    assert_eq!(download(addr).await, SIZE);

    let after = lb.rss_kib();
    let grew = after.saturating_sub(before);
    assert!(
        grew < 20 * 1024,
        "autolb RSS grew by {grew} KiB ({before} -> {after}) for 300 MB streamed"
    );
}
