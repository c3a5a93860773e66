//! Holds many idle WebSocket connections open through a proxy: the client of `bench/run`'s
//! WebSocket scenario (memory per idle WebSocket).
//!
//! ```text
//! ws_hold --url ws://127.0.0.1:4110/ws --conns 25000 [--sources 127.0.1.1-20]
//!         [--concurrency 256] [--timeout-ms 10000] [--hold-secs 600]
//! ```
//!
//! Each connection binds its own source address, taken in turn from `--sources` (a range of
//! the last octet; more addresses, more ports), does the WebSocket handshake and reads the
//! first message (`autolb-echo` sends its name), then stays silent. Once every connection is
//! up or has failed, one line goes to stdout:
//!
//! ```text
//! established=25000 failed=0 seconds=6.21 backends=b1:12500,b2:12500 first_error=-
//! ```
//!
//! Then the connections are held until stdin closes or `--hold-secs` passes, and dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const USAGE: &str = "usage: ws_hold --url ws://HOST:PORT/PATH --conns N [--sources A.B.C.D-E] \
[--concurrency N] [--timeout-ms MS] [--hold-secs S]";

struct Args {
    url: String,
    target: SocketAddr,
    conns: usize,
    sources: Vec<Ipv4Addr>,
    concurrency: usize,
    timeout: Duration,
    hold: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut conns = 1000usize;
    let mut sources = "127.0.0.1-1".to_string();
    let mut concurrency = 256usize;
    let mut timeout_ms = 10_000u64;
    let mut hold_secs = 600u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("bad {flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--conns" => conns = num(value()?)? as usize,
            "--sources" => sources = value()?,
            "--concurrency" => concurrency = num(value()?)?.max(1) as usize,
            "--timeout-ms" => timeout_ms = num(value()?)?,
            "--hold-secs" => hold_secs = num(value()?)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("--url must be ws://IP:PORT/PATH, got {url:?}"))?;
    let target: SocketAddr = hostport
        .parse()
        .map_err(|e| format!("--url needs an IP:PORT, got {hostport:?}: {e}"))?;
    Ok(Args {
        url,
        target,
        conns,
        sources: parse_sources(&sources)?,
        concurrency,
        timeout: Duration::from_millis(timeout_ms),
        hold: Duration::from_secs(hold_secs),
    })
}

/// `127.0.1.1-20` -> 127.0.1.1 ... 127.0.1.20; a single address is a range of one.
fn parse_sources(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (first, last) = match spec.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (spec, None),
    };
    let first: Ipv4Addr = first
        .parse()
        .map_err(|e| format!("bad --sources {spec:?}: {e}"))?;
    let [a, b, c, lo] = first.octets();
    let hi = match last {
        Some(v) => v
            .parse::<u8>()
            .map_err(|e| format!("bad --sources {spec:?}: {e}"))?,
        None => lo,
    };
    if hi < lo {
        return Err(format!("bad --sources {spec:?}: empty range"));
    }
    Ok((lo..=hi).map(|d| Ipv4Addr::new(a, b, c, d)).collect())
}

/// Raise the open-file limit to its hard maximum: one descriptor per connection.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// One connection: bind the source, connect, handshake, read the greeting (the backend's name).
async fn open(args: &Args, source: Ipv4Addr) -> Result<(Ws, String), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(args.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    // Small buffers: this client must not be the thing that runs out of memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(&args.url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(name))) => Ok((ws, name.to_string())),
        Some(Ok(other)) => Err(format!("unexpected first message {other:?}")),
        Some(Err(e)) => Err(format!("read: {e}")),
        None => Err("closed before the first message".to_string()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    raise_nofile();
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..args.conns {
        let (args, gate) = (args.clone(), gate.clone());
        let source = args.sources[i % args.sources.len()];
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(args.timeout, open(&args, source)).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {:?}", args.timeout)),
            }
        });
    }
    let mut held: Vec<Ws> = Vec::with_capacity(args.conns);
    let mut backends: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed, mut first_error) = (0usize, None::<String>);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((ws, name)) => {
                held.push(ws);
                *backends.entry(name).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let backends: Vec<String> = backends.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "established={} failed={} seconds={:.2} backends={} first_error={}",
        held.len(),
        failed,
        started.elapsed().as_secs_f64(),
        if backends.is_empty() {
            "-".to_string()
        } else {
            backends.join(",")
        },
        first_error.as_deref().unwrap_or("-").replace(' ', "_"),
    );
    // Hold until stdin closes (the driver is done measuring) or the hold time is over.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let wait_eof = async {
        while let Ok(n) = stdin.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = wait_eof => {}
        _ = tokio::time::sleep(args.hold) => {}
    }
    drop(held);
}
