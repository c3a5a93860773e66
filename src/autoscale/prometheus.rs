//! `target.prometheus`: one instant query (`GET /api/v1/query?query=...`) against a
//! Prometheus-compatible server, over HTTP/1.1 (https with the system's roots), bounded by
//! the target's `timeout`. The value is the sum of the vector's samples (0 for an empty
//! vector: no series, no demand), or the scalar.

use bytes::Bytes;
use http::header::{ACCEPT, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::{PrometheusTarget, UpstreamProtocol, UpstreamTls};

/// Largest answer read (a query for one number answers in a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

/// The query's value, or why there is none.
pub async fn query(p: &PrometheusTarget) -> Result<f64, String> {
    match tokio::time::timeout(p.timeout, fetch(p)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", p.timeout)),
    }
}

async fn fetch(p: &PrometheusTarget) -> Result<f64, String> {
    let u = &p.url;
    let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", u.host))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let body = if u.https {
        let tls = UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            client_cert: None,
            client_key: None,
        };
        let cfg = crate::tls::client::client_config(&tls, UpstreamProtocol::H1)
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(u.host.clone())
            .map_err(|e| format!("invalid server name {}: {e}", u.host))?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", u.host))?;
        exchange(TokioIo::new(stream), p).await?
    } else {
        exchange(TokioIo::new(tcp), p).await?
    };
    value(&body)
}

async fn exchange<I>(io: I, p: &PrometheusTarget) -> Result<Bytes, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let u = &p.url;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let base = u.path.trim_end_matches('/');
    let path = format!("{base}/api/v1/query?query={}", encode(&p.query));
    let host = u.host_header();
    let req = Request::get(path)
        .header(HOST, host)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("autolb/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(format!("HTTP {status}: {why}"));
    }
    Ok(body)
}

/// The number in a `/api/v1/query` answer.
fn value(body: &[u8]) -> Result<f64, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("status is not success")
        ));
    }
    let sample = |s: &Value| -> Result<f64, String> {
        let x: f64 = s[1]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| "a sample without a number".to_string())?;
        if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("the query's value is {x}"))
        }
    };
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or("a vector without results")?
            .iter()
            .map(|series| sample(&series["value"]))
            .sum(),
        Some("scalar") => sample(&data["result"]),
        Some(other) => Err(format!(
            "the query gives a {other}; it must give an instant vector or a scalar"
        )),
        None => Err("no resultType in the answer".to_string()),
    }
}

/// Percent-encoding of a query parameter (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_summed_and_scalars_read() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1.5,"12.5"]},{"metric":{"a":"2"},"value":[1.5,"7.5"]}]}}"#;
        assert_eq!(value(v), Ok(20.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(value(empty), Ok(0.0));
        let s = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(value(s), Ok(3.0));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(value(nan).is_err());
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(value(matrix).unwrap_err().contains("matrix"));
        let failed = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(value(failed), Err("query failed: parse error".into()));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode(r#"sum(rate(x{job="a b"}[1m]))"#),
            "sum%28rate%28x%7Bjob%3D%22a%20b%22%7D%5B1m%5D%29%29"
        );
    }
}
