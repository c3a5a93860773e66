//! Closed-loop HTTP/3 load (h3 over quinn): the client of `bench/run --only h3`, for autolb and
//! Caddy alike.
//!
//! ```text
//! h3_load --url https://127.0.0.1:8443/ --conns 16 --streams 4 --duration-secs 5
//!         [--probe N]
//! ```
//!
//! `--conns` QUIC connections each keep `--streams` requests in flight (a new GET as soon as
//! one answer has been read to its end) for `--duration-secs`; requests in flight at the end
//! finish and count. `--probe N` sends N requests one after the other on one connection
//! instead (a start-up check). The server's certificate is not verified: this is a load
//! generator for loopback benches, like `oha --insecure`.
//!
//! Why not `oha --http-version 3`: it drives autolb, but against Caddy 2.6 (quic-go) it sends
//! its requests, Caddy answers them (its log shows each round trip) and oha never completes
//! one: it waits on every stream until its own deadline. Both servers get the same client
//! here.
//!
//! Prints one JSON object on stdout: `requests` (2xx answers read to their end), `errors`
//! (other statuses, stream and connection errors), `first_error`, `seconds`, `rps`, and
//! `latency_ms` (`p50`, `p99`).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use tokio::time::Instant;

const USAGE: &str = "usage: h3_load --url https://IP:PORT/PATH [--conns N] [--streams N] \
[--duration-secs S] [--probe N]";

struct Args {
    url: http::Uri,
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    duration: Duration,
    probe: Option<usize>,
}

fn args() -> Result<Args, String> {
    let mut url = None;
    let (mut conns, mut streams, mut secs, mut probe) = (16, 4, 5.0, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value),
            "--conns" => conns = num(&value)? as usize,
            "--streams" => streams = num(&value)? as usize,
            "--duration-secs" => secs = num(&value)?,
            "--probe" => probe = Some(num(&value)? as usize),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let url: http::Uri = url
        .ok_or("--url is required")?
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    let authority = url.authority().ok_or("--url needs host:port")?;
    let addr = authority
        .as_str()
        .parse()
        .map_err(|e| format!("--url: host must be IP:PORT: {e}"))?;
    Ok(Args {
        url,
        addr,
        conns: conns.max(1),
        streams: streams.max(1),
        duration: Duration::from_secs_f64(secs),
        probe,
    })
}

/// Accepts any server certificate (loopback benches only).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn endpoint() -> Result<quinn::Endpoint, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "addr")?)
        .map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

type Send = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<Send, String> {
    let conn = endpoint
        .connect(addr, &addr.ip().to_string())
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| format!("h3 setup: {e}"))?;
    tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
    Ok(send)
}

/// One GET read to its end: its status.
async fn get(send: &mut Send, url: &http::Uri) -> Result<u16, String> {
    let req = http::Request::get(url.clone())
        .body(())
        .map_err(|e| e.to_string())?;
    let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
    stream.finish().await.map_err(|e| e.to_string())?;
    let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        chunk.advance(chunk.remaining());
    }
    Ok(resp.status().as_u16())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn note(&mut self, started: Instant, r: Result<u16, String>) {
        match r {
            Ok(s) if (200..300).contains(&s) => {
                self.latencies_us.push(started.elapsed().as_micros() as u64)
            }
            Ok(s) => self.fail(format!("status {s}")),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One connection's share: `streams` loops of GETs until `until`.
async fn drive(endpoint: quinn::Endpoint, args: Arc<Args>, until: Instant) -> Tally {
    let send = match connect(&endpoint, args.addr).await {
        Ok(s) => s,
        Err(e) => {
            let mut t = Tally::default();
            t.fail(e);
            return t;
        }
    };
    let mut loops = Vec::new();
    for _ in 0..args.streams {
        let mut send = send.clone();
        let args = args.clone();
        loops.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < until {
                let started = Instant::now();
                let r = get(&mut send, &args.url).await;
                let failed = r.is_err();
                t.note(started, r);
                if failed && t.errors > 1000 {
                    break;
                }
            }
            t
        }));
    }
    let mut tally = Tally::default();
    for l in loops {
        match l.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.fail(e.to_string()),
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("h3_load: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let endpoint = match endpoint() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("h3_load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let mut tally = Tally::default();
    if let Some(n) = args.probe {
        let limit = Duration::from_secs(10);
        match tokio::time::timeout(limit, connect(&endpoint, args.addr)).await {
            Ok(Ok(mut send)) => {
                for _ in 0..n {
                    let started = Instant::now();
                    match tokio::time::timeout(limit, get(&mut send, &args.url)).await {
                        Ok(r) => tally.note(started, r),
                        Err(_) => tally.fail(format!("no answer within {limit:?}")),
                    }
                }
            }
            Ok(Err(e)) => tally.fail(e),
            Err(_) => tally.fail(format!("no connection within {limit:?}")),
        }
    } else {
        let until = start + args.duration;
        let conns: Vec<_> = (0..args.conns)
            .map(|_| tokio::spawn(drive(endpoint.clone(), args.clone(), until)))
            .collect();
        for c in conns {
            match c.await {
                Ok(t) => tally.merge(t),
                Err(e) => tally.fail(e.to_string()),
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    endpoint.close(0u32.into(), b"done");
    let mut sorted = tally.latencies_us;
    sorted.sort_unstable();
    let out = serde_json::json!({
        "requests": sorted.len(),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": seconds,
        "rps": sorted.len() as f64 / seconds.max(1e-9),
        "latency_ms": {"p50": percentile(&sorted, 0.50), "p99": percentile(&sorted, 0.99)},
    });
    println!("{out}");
    std::process::ExitCode::SUCCESS
}
