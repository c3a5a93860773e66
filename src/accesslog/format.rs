//! The two line formats: JSON (one object per line) and Apache/nginx "combined" followed by
//! autolb's fields as `key=value`.

use std::fmt::Write;
use std::time::SystemTime;

use http::{HeaderValue, Version};
use serde::Serialize;

use super::Entry;

fn text(v: Option<&HeaderValue>) -> Option<String> {
    v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Names from the entry's snapshot.
fn names(e: &Entry) -> (&str, Option<&str>, Option<&str>) {
    let listener = e
        .snapshot
        .listeners
        .get(e.listener)
        .map_or("-", |l| l.name.as_str());
    let pool = e
        .pool
        .and_then(|p| e.snapshot.pools.get(p))
        .map(|p| p.name.as_str());
    let backend = e.backend.as_ref().map(|b| b.address.as_str());
    (listener, pool, backend)
}

/// Milliseconds with microsecond precision.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn millis(e: &Entry) -> f64 {
    ms(e.duration)
}

/// `queue_ms`, `connect_ms` (null on a reused connection) and `ttfb_ms`; all null when no
/// backend answered.
fn timings(e: &Entry) -> (Option<f64>, Option<f64>, Option<f64>) {
    match &e.timing {
        Some(t) => (Some(ms(t.queued)), t.connect.map(ms), Some(ms(t.ttfb))),
        None => (None, None, None),
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    host: Option<String>,
    path: String,
    /// The path as the client sent it, when normalization changed it (else null).
    original_path: Option<&'a str>,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    listener: &'a str,
    pool: Option<&'a str>,
    backend: Option<&'a str>,
    tries: u32,
    tls: Option<&'static str>,
    request_id: String,
    user_agent: Option<String>,
    referer: Option<String>,
    encoding: Option<&'static str>,
    complete: bool,
    queue_ms: Option<f64>,
    connect_ms: Option<f64>,
    ttfb_ms: Option<f64>,
    request_bytes: u64,
    grpc_status: Option<u8>,
    abort: Option<&'static str>,
    cache: Option<&'static str>,
    /// The subject of the client's verified certificate (RFC 4514).
    client_cert: Option<&'a str>,
}

/// One JSON object (no newline).
pub fn json(e: &Entry) -> String {
    let (listener, pool, backend) = names(e);
    let (queue_ms, connect_ms, ttfb_ms) = timings(e);
    let line = JsonLine {
        time: humantime::format_rfc3339_millis(e.start).to_string(),
        client: e.client.to_string(),
        method: e.method.as_str(),
        host: text(e.host.as_ref()),
        path: e.uri.to_string(),
        original_path: e.original.as_ref().map(|o| o.as_str()),
        protocol: protocol(e.version),
        status: e.status,
        bytes: e.bytes,
        duration_ms: millis(e),
        listener,
        pool,
        backend,
        tries: e.tries,
        tls: e.tls,
        request_id: String::from_utf8_lossy(e.request_id.as_bytes()).into_owned(),
        user_agent: text(e.user_agent.as_ref()),
        referer: text(e.referer.as_ref()),
        encoding: e.encoding,
        complete: e.complete,
        queue_ms,
        connect_ms,
        ttfb_ms,
        request_bytes: e.request_bytes,
        grpc_status: e.grpc_status,
        abort: e.abort,
        cache: e.cache,
        client_cert: e.client_cert.as_ref().map(|c| c.subject.as_str()),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// `[10/Oct/2000:13:55:36 +0000]` (UTC).
fn clf_time(t: SystemTime) -> String {
    // RFC 3339 in UTC: 2000-10-10T13:55:36Z
    let s = humantime::format_rfc3339_seconds(t).to_string();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    match (s.get(0..4), s.get(8..10), s.get(11..19)) {
        (Some(y), Some(d), Some(hms)) => format!("[{d}/{month}/{y}:{hms} +0000]"),
        _ => "[-]".to_string(),
    }
}

/// Text inside a quoted field: `"` and `\` escaped, control and non-ASCII bytes as `\xHH`
/// (nginx's escaping), so that a line can never be split or forged by a client.
fn quoted(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// A value of the `key=value` part: `-` when empty, spaces and controls escaped.
fn bare(out: &mut String, v: Option<&[u8]>) {
    match v {
        None | Some(&[]) => out.push('-'),
        Some(bytes) => {
            for &b in bytes {
                match b {
                    0x21..=0x7e if b != b'"' && b != b'\\' => out.push(b as char),
                    _ => {
                        let _ = write!(out, "\\x{b:02X}");
                    }
                }
            }
        }
    }
}

/// `client - - [time] "METHOD uri PROTO" status bytes "referer" "user-agent"` and then
/// `host= rt= listener= pool= backend= tries= tls= rid= enc= complete= orig=` (`orig`: the
/// path as sent, when normalization changed it, else `-`) `req_bytes= queue_ms= connect_ms=
/// ttfb_ms= grpc= abort= cache= cert=` (`-` where the JSON has null; `grpc`: a gRPC call's
/// status; `cert`: the subject of the client's verified certificate).
pub fn combined(e: &Entry) -> String {
    let (listener, pool, backend) = names(e);
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{} - - {} \"", e.client, clf_time(e.start));
    quoted(&mut out, e.method.as_str().as_bytes());
    out.push(' ');
    quoted(&mut out, e.uri.to_string().as_bytes());
    let _ = write!(
        out,
        " {}\" {} {} \"",
        protocol(e.version),
        e.status,
        e.bytes
    );
    match &e.referer {
        Some(r) => quoted(&mut out, r.as_bytes()),
        None => out.push('-'),
    }
    out.push_str("\" \"");
    match &e.user_agent {
        Some(u) => quoted(&mut out, u.as_bytes()),
        None => out.push('-'),
    }
    out.push_str("\" host=");
    bare(&mut out, e.host.as_ref().map(|h| h.as_bytes()));
    let _ = write!(out, " rt={:.3} listener=", e.duration.as_secs_f64());
    bare(&mut out, Some(listener.as_bytes()));
    out.push_str(" pool=");
    bare(&mut out, pool.map(str::as_bytes));
    out.push_str(" backend=");
    bare(&mut out, backend.map(str::as_bytes));
    let _ = write!(out, " tries={} tls={} rid=", e.tries, e.tls.unwrap_or("-"));
    bare(&mut out, Some(e.request_id.as_bytes()));
    let _ = write!(
        out,
        " enc={} complete={} orig=",
        e.encoding.unwrap_or("-"),
        e.complete
    );
    bare(&mut out, e.original.as_ref().map(|o| o.as_str().as_bytes()));
    let (queue, connect, ttfb) = timings(e);
    let _ = write!(out, " req_bytes={}", e.request_bytes);
    for (key, v) in [
        ("queue_ms", queue),
        ("connect_ms", connect),
        ("ttfb_ms", ttfb),
    ] {
        match v {
            Some(v) => {
                let _ = write!(out, " {key}={v:.3}");
            }
            None => {
                let _ = write!(out, " {key}=-");
            }
        }
    }
    match e.grpc_status {
        Some(code) => {
            let _ = write!(out, " grpc={code}");
        }
        None => out.push_str(" grpc=-"),
    }
    let _ = write!(
        out,
        " abort={} cache={}",
        e.abort.unwrap_or("-"),
        e.cache.unwrap_or("-")
    );
    out.push_str(" cert=");
    bare(
        &mut out,
        e.client_cert.as_ref().map(|c| c.subject.as_bytes()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(971_186_136);
        assert_eq!(clf_time(t), "[10/Oct/2000:13:55:36 +0000]");
    }

    #[test]
    fn quoting_cannot_forge_a_line() {
        let mut s = String::new();
        quoted(&mut s, b"a\"b\\c\nd\xffe");
        assert_eq!(s, "a\\\"b\\\\c\\x0Ad\\xFFe");
        let mut s = String::new();
        bare(&mut s, Some(b"x y=z"));
        assert_eq!(s, "x\\x20y=z");
        let mut s = String::new();
        bare(&mut s, None);
        assert_eq!(s, "-");
    }
}
