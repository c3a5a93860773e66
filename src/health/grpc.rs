//! `health_check: { type: grpc }`: the standard gRPC health protocol,
//! `grpc.health.v1.Health/Check` with a `HealthCheckRequest { service }`; the backend passes
//! when the call ends with `grpc-status: 0` and its `HealthCheckResponse` says SERVING.
//! The two one-field protobuf messages are encoded and read here (no codegen).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;

use super::check::Verdict;
use crate::upstream::RequestBody;

/// The method every gRPC health server serves.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus` names, by value.
const SERVING_STATUS: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// The check's request: a POST of one length-prefixed `HealthCheckRequest { service }`.
pub fn request(service: &str, authority: &str) -> Result<Request<RequestBody>, http::Error> {
    let mut message = BytesMut::with_capacity(service.len() + 8);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited).
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut body = BytesMut::with_capacity(5 + message.len());
    body.put_u8(0); // not compressed
    body.put_u32(message.len() as u32);
    body.put_slice(&message);
    Request::builder()
        .method(Method::POST)
        .uri(CHECK_PATH)
        .header(http::header::HOST, authority)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header(TE, HeaderValue::from_static("trailers"))
        .header(USER_AGENT, HeaderValue::from_static("autolb-health-check"))
        .body(RequestBody::Full(Some(body.freeze())))
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn get_varint(b: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of a `HealthCheckResponse` message; unknown fields skipped.
fn serving_status(mut m: Bytes) -> Option<u64> {
    let mut status = 0; // proto3 default: UNKNOWN
    while m.has_remaining() {
        let key = get_varint(&mut m)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut m)?,
            (_, 0) => {
                get_varint(&mut m)?;
            }
            (_, 1) if m.remaining() >= 8 => m.advance(8),
            (_, 2) => {
                let len = usize::try_from(get_varint(&mut m)?).ok()?;
                if m.remaining() < len {
                    return None;
                }
                m.advance(len);
            }
            (_, 5) if m.remaining() >= 4 => m.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

/// The verdict on a Check call's answer: HTTP status, headers, body and trailers.
pub async fn verdict(resp: http::Response<hyper::body::Incoming>) -> Verdict {
    let status = resp.status();
    if status != http::StatusCode::OK {
        return Verdict {
            ok: false,
            detail: format!("status {}", status.as_u16()),
        };
    }
    let (parts, body) = resp.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => {
            return Verdict {
                ok: false,
                detail: format!("answer broken: {e}"),
            }
        }
    };
    let trailers = collected.trailers().cloned();
    judge(&parts.headers, trailers.as_ref(), collected.to_bytes())
}

/// The verdict on an answer's parts (`grpc-status` in the trailers, or in the headers of
/// a Trailers-Only answer).
fn judge(headers: &HeaderMap, trailers: Option<&HeaderMap>, mut body: Bytes) -> Verdict {
    let fail = |detail: String| Verdict { ok: false, detail };
    let grpc_status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => {
            let message = trailers
                .and_then(|t| t.get("grpc-message"))
                .or_else(|| headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return fail(
                format!("grpc-status {code} {message}")
                    .trim_end()
                    .to_owned(),
            );
        }
        None => return fail("no grpc-status".into()),
    }
    if body.remaining() < 5 {
        return fail("no HealthCheckResponse".into());
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 || body.remaining() < len {
        return fail("unreadable HealthCheckResponse".into());
    }
    match serving_status(body.split_to(len)) {
        Some(1) => Verdict {
            ok: true,
            detail: "SERVING".into(),
        },
        Some(s) => fail(
            SERVING_STATUS
                .get(s as usize)
                .map_or_else(|| format!("serving status {s}"), |n| (*n).to_owned()),
        ),
        None => fail("unreadable HealthCheckResponse".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(message.len() as u32);
        b.put_slice(message);
        b.freeze()
    }

    fn ok_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    #[test]
    fn serving_passes_and_anything_else_fails() {
        let h = HeaderMap::new();
        let t = ok_trailers();
        assert!(judge(&h, Some(&t), framed(&[0x08, 0x01])).ok);
        let v = judge(&h, Some(&t), framed(&[0x08, 0x02]));
        assert_eq!((v.ok, v.detail.as_str()), (false, "NOT_SERVING"));
        // status absent: UNKNOWN; unknown fields are skipped.
        assert!(!judge(&h, Some(&t), framed(&[])).ok);
        assert!(judge(&h, Some(&t), framed(&[0x12, 0x01, 0x78, 0x08, 0x01])).ok);
        assert!(!judge(&h, Some(&t), framed(&[0x08])).ok);
        let mut failed = HeaderMap::new();
        failed.insert("grpc-status", HeaderValue::from_static("5"));
        failed.insert("grpc-message", HeaderValue::from_static("unknown service"));
        let v = judge(&failed, None, Bytes::new());
        assert_eq!(v.detail, "grpc-status 5 unknown service");
        assert!(!judge(&h, None, framed(&[0x08, 0x01])).ok, "no grpc-status");
    }

    #[test]
    fn the_request_names_its_service() {
        let mut b = BytesMut::new();
        put_varint(&mut b, 300);
        assert_eq!(&b[..], &[0xac, 0x02]);
        assert_eq!(get_varint(&mut b.freeze()), Some(300));
        let req = request("pkg.Svc", "a:1").expect("request");
        assert_eq!(req.uri().path(), CHECK_PATH);
        assert_eq!(req.headers()["te"], "trailers");
    }
}
