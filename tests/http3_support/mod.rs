//! HTTP/3 test helpers shared by the HTTP/3 test binaries: a real HTTP/3 client (h3 over
//! quinn) trusting a test CA, one request with its whole answer, and an autolb with an https
//! listener `secure` serving HTTP/3.
#![allow(dead_code)]

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};

use crate::common::tls::{https_config, TestCa};
use crate::common::Autolb;

pub type Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Every wait for the network is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(30);

/// QUIC client settings trusting `ca`, ALPN h3, TLS session resumption with 0-RTT offered
/// (`early`).
pub fn client_config(ca: &TestCa, early: bool) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = early;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A QUIC client endpoint with `client_config(ca, early)`.
pub fn client(ca: &TestCa, early: bool) -> quinn::Endpoint {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(client_config(ca, early));
    endpoint
}

/// An HTTP/3 connection: the QUIC connection, its request sender, and its driver's task
/// (which ends, with the close reason, when the connection closes).
pub struct H3 {
    pub conn: quinn::Connection,
    pub send: Send,
    pub driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, sni: &str) -> H3 {
    let connecting = endpoint.connect(addr, sni).expect("connect");
    let conn = tokio::time::timeout(LIMIT, connecting)
        .await
        .expect("QUIC handshake in time")
        .expect("QUIC handshake");
    h3_over(conn).await
}

pub async fn h3_over(conn: quinn::Connection) -> H3 {
    let (mut driver, send) = tokio::time::timeout(
        LIMIT,
        h3::client::new(h3_quinn::Connection::new(conn.clone())),
    )
    .await
    .expect("h3 setup in time")
    .expect("h3 setup");
    let driver = tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
    H3 { conn, send, driver }
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// One request with `body` (none when empty), its whole answer.
pub async fn request(
    send: &mut Send,
    method: &str,
    url: &str,
    body: &[u8],
) -> Result<Answer, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    if !body.is_empty() {
        req = req.header("content-length", body.len());
    }
    let req = req.body(()).expect("request");
    let exchange = async {
        let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            // In pieces, as a client streams a large upload.
            for piece in body.chunks(16 * 1024) {
                stream
                    .send_data(Bytes::copy_from_slice(piece))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok(Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body,
        })
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// An https listener `secure` with `http3: true` (and `extra` under it) in front of `e`,
/// with a certificate for a.test.
pub struct Setup {
    pub lb: Autolb,
    pub ca: TestCa,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

pub fn start(backends: &[SocketAddr], extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let listener = format!("    http3: true\n{extra}");
    let yaml = https_config(&[(cert.clone(), key.clone())], "", &listener, "", backends);
    let lb = Autolb::start(&format!("{yaml}access_log: {{ path: stderr }}\n"));
    Setup {
        lb,
        ca,
        cert,
        key,
        _dir: dir,
    }
}
