//! Open-loop, constant-rate HTTP/1.1 load with latency corrected for coordinated omission
//! (wrk2-style): the client of `bench/seed`.
//!
//! ```text
//! open_loop --targets http://127.0.0.1:8080[,http://127.0.0.1:3101,...] --rate 1000
//!           --duration-secs 120 [--delay-mean-ms 100] [--delay-sigma 1.0] [--seed 1]
//!           [--timeout-ms 10000]
//! ```
//!
//! Request `i` is due at `start + i / rate`, whatever happened to the requests before it: it
//! is sent then (on an idle keep-alive connection, or a new one), and its latency is counted
//! from the time it was *due*, not from the time it was sent, so a stall of the server shows
//! in the latencies of every request it delayed (Gil Tene's coordinated omission, as `wrk2`
//! corrects it). Targets are used in turn.
//!
//! Each request is `GET /delay/{ms}` with `ms` drawn from a lognormal distribution of mean
//! `--delay-mean-ms` and shape `--delay-sigma` (1.0: median 61 ms, p95 314 ms, p99 621 ms
//! for a 100 ms mean), from a seeded generator: two runs with the same seed ask for the same
//! delays in the same order, so the time a proxy adds is the difference of the two runs'
//! `overhead` (latency minus the delay asked for). `--delay-mean-ms 0` asks for `/` instead.
//!
//! Prints one JSON object on stdout: `sent`, `ok`, `errors` (non-2xx, connect, I/O and
//! timeouts), `first_error`, `seconds`, `rate`, `latency_ms` and `overhead_ms` (`avg`, `p50`,
//! `p95`, `p99`, `p999`, `max`), `send_lag_max_ms` (how late the client itself was),
//! `connections` (opened) and `backends` (answers per `x-backend`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

const USAGE: &str = "usage: open_loop --targets http://IP:PORT[,http://IP:PORT...] --rate N \
--duration-secs S [--delay-mean-ms MS] [--delay-sigma S] [--seed N] [--timeout-ms MS]";

struct Args {
    targets: Vec<SocketAddr>,
    rate: f64,
    duration: Duration,
    delay_mean_ms: f64,
    delay_sigma: f64,
    seed: u64,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut targets = None;
    let mut rate = 1000.0f64;
    let mut duration_secs = 10.0f64;
    let mut delay_mean_ms = 100.0f64;
    let mut delay_sigma = 1.0f64;
    let mut seed = 1u64;
    let mut timeout_ms = 10_000.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(format!("bad {flag} {v:?}"))
        };
        match flag.as_str() {
            "--targets" => targets = Some(value()?),
            "--rate" => rate = num(value()?)?,
            "--duration-secs" => duration_secs = num(value()?)?,
            "--delay-mean-ms" => delay_mean_ms = num(value()?)?,
            "--delay-sigma" => delay_sigma = num(value()?)?,
            "--seed" => seed = num(value()?)? as u64,
            "--timeout-ms" => timeout_ms = num(value()?)?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let targets = targets.ok_or_else(|| format!("--targets is required\n{USAGE}"))?;
    let targets = targets
        .split(',')
        .map(|t| {
            let hostport = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
            hostport
                .parse::<SocketAddr>()
                .map_err(|e| format!("a target must be http://IP:PORT, got {t:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    Ok(Args {
        targets,
        rate,
        duration: Duration::from_secs_f64(duration_secs),
        delay_mean_ms,
        delay_sigma,
        seed,
        timeout: Duration::from_secs_f64(timeout_ms / 1000.0),
    })
}

/// A lognormal draw (Box-Muller) with the given mean and shape, in whole milliseconds.
fn lognormal_ms(rng: &mut fastrand::Rng, mean: f64, sigma: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    let mu = mean.ln() - sigma * sigma / 2.0;
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (mu + sigma * z).exp().round().min(600_000.0) as u64
}

/// Idle keep-alive connections of one target.
type Idle = Arc<Mutex<Vec<SendRequest<Empty<Bytes>>>>>;

struct Outcome {
    latency_us: u64,
    delay_ms: u64,
    result: Result<String, String>,
    opened: bool,
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// One request on an idle connection (or a new one); the `x-backend` of a 2xx answer.
async fn request(
    addr: SocketAddr,
    idle: &Idle,
    delay_ms: u64,
    mean: f64,
) -> (Result<String, String>, bool) {
    let pooled = idle.lock().map(|mut v| v.pop()).unwrap_or(None);
    let (mut send, opened) = match pooled {
        Some(s) if s.is_ready() => (s, false),
        _ => match connect(addr).await {
            Ok(s) => (s, true),
            Err(e) => return (Err(e), true),
        },
    };
    let path = if mean > 0.0 {
        format!("/delay/{delay_ms}")
    } else {
        "/".to_string()
    };
    let req = match http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return (Err(format!("request: {e}")), opened),
    };
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return (Err(format!("send: {e}")), opened),
    };
    let status = resp.status();
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if let Err(e) = resp.into_body().collect().await {
        return (Err(format!("body: {e}")), opened);
    }
    if !status.is_success() {
        return (Err(format!("status {}", status.as_u16())), opened);
    }
    if let Ok(mut v) = idle.lock() {
        v.push(send);
    }
    (Ok(backend), opened)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn summary(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let avg = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0
    };
    serde_json::json!({
        "avg": avg,
        "p50": percentile(&v, 50.0),
        "p95": percentile(&v, 95.0),
        "p99": percentile(&v, 99.0),
        "p999": percentile(&v, 99.9),
        "max": percentile(&v, 100.0),
    })
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    raise_nofile();
    let idle: Vec<Idle> = args.targets.iter().map(|_| Idle::default()).collect();
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let mut lag_max = Duration::ZERO;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        lag_max = lag_max.max(Instant::now().saturating_duration_since(due));
        let delay_ms = lognormal_ms(&mut rng, args.delay_mean_ms, args.delay_sigma);
        let k = (i % args.targets.len() as u64) as usize;
        let (addr, pool, tx) = (args.targets[k], idle[k].clone(), tx.clone());
        let (timeout, mean) = (args.timeout, args.delay_mean_ms);
        tokio::spawn(async move {
            let (result, opened) =
                match tokio::time::timeout(timeout, request(addr, &pool, delay_ms, mean)).await {
                    Ok(r) => r,
                    Err(_) => (Err(format!("timed out after {timeout:?}")), false),
                };
            let _ = tx.send(Outcome {
                latency_us: due.elapsed().as_micros() as u64,
                delay_ms,
                result,
                opened,
            });
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut overheads = Vec::with_capacity(total as usize);
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let (mut ok, mut failed, mut opened, mut first_error) = (0u64, 0u64, 0u64, None::<String>);
    while let Some(o) = rx.recv().await {
        opened += u64::from(o.opened);
        match o.result {
            Ok(backend) => {
                ok += 1;
                latencies.push(o.latency_us);
                overheads.push(o.latency_us.saturating_sub(o.delay_ms * 1000));
                *backends.entry(backend).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.clone());
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "sent": total,
        "ok": ok,
        "errors": failed,
        "first_error": first_error,
        "error_kinds": errors.len(),
        "seconds": seconds,
        "rate": args.rate,
        "latency_ms": summary(latencies),
        "overhead_ms": summary(overheads),
        "send_lag_max_ms": lag_max.as_secs_f64() * 1000.0,
        "connections": opened,
        "backends": backends,
    });
    println!("{doc}");
}
