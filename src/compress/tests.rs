//! Unit tests of negotiation, the compress-or-not decision, header rewriting and the
//! streaming encoders (decoded back with flate2 and brotli).

use std::io::Read;

use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY};
use http::{HeaderMap, Method, StatusCode};

use super::encoder::Encoder;
use super::*;
use crate::config::{Compress, Encoding};

const BOTH: &[Encoding] = &[Encoding::Brotli, Encoding::Gzip];

fn neg(accept: &str, offered: &[Encoding]) -> Option<Encoding> {
    let v = HeaderValue::from_str(accept).expect("value");
    negotiate(std::iter::once(&v), offered)
}

#[test]
fn negotiation_follows_q_values_then_our_preference() {
    assert_eq!(neg("gzip, deflate, br", BOTH), Some(Encoding::Brotli));
    assert_eq!(neg("gzip", BOTH), Some(Encoding::Gzip));
    assert_eq!(neg("br;q=0.5, gzip;q=0.8", BOTH), Some(Encoding::Gzip));
    assert_eq!(neg("br;q=0, gzip", BOTH), Some(Encoding::Gzip));
    assert_eq!(neg("gzip;q=0", BOTH), None);
    assert_eq!(neg("identity", BOTH), None);
    assert_eq!(neg("*", BOTH), Some(Encoding::Brotli));
    assert_eq!(neg("*;q=0.1, br;q=0", BOTH), Some(Encoding::Gzip));
    assert_eq!(neg("deflate", BOTH), None);
    assert_eq!(neg("br", &[Encoding::Gzip]), None);
    assert_eq!(neg("GZIP; Q=1", BOTH), Some(Encoding::Gzip));
    assert_eq!(negotiate(std::iter::empty(), BOTH), None);
}

fn compress(min_size: u64) -> Compress {
    Compress {
        types: vec!["text/*".into(), "application/json".into()],
        min_size,
        level: 5,
        algorithms: BOTH.to_vec(),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[test]
fn only_eligible_responses_are_compressed() {
    let c = compress(100);
    let ok = |m: &Method, s: u16, h: &[(&str, &str)]| {
        applies(&c, m, StatusCode::from_u16(s).expect("status"), &headers(h))
    };
    let get = &Method::GET;
    assert!(ok(
        get,
        200,
        &[("content-type", "text/html; charset=utf-8")]
    ));
    assert!(ok(
        get,
        404,
        &[
            ("content-type", "application/json"),
            ("content-length", "100")
        ]
    ));
    assert!(!ok(get, 200, &[("content-type", "image/png")]), "type");
    assert!(!ok(get, 200, &[]), "no type");
    assert!(
        !ok(
            get,
            200,
            &[("content-type", "text/plain"), ("content-length", "99")]
        ),
        "tiny"
    );
    assert!(
        !ok(
            get,
            200,
            &[("content-type", "text/plain"), ("content-encoding", "gzip")]
        ),
        "encoded"
    );
    assert!(ok(
        get,
        200,
        &[
            ("content-type", "text/plain"),
            ("content-encoding", "identity")
        ]
    ));
    assert!(
        !ok(
            get,
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "public, No-Transform")
            ]
        ),
        "no-transform"
    );
    assert!(
        !ok(&Method::HEAD, 200, &[("content-type", "text/plain")]),
        "HEAD"
    );
    for s in [101, 204, 206, 304] {
        assert!(!ok(get, s, &[("content-type", "text/plain")]), "{s}");
    }
    assert!(!ok(
        get,
        200,
        &[
            ("content-type", "text/plain"),
            ("content-range", "bytes 0-1/2")
        ]
    ));
}

#[test]
fn headers_say_the_coding_and_lose_the_length() {
    let mut h = headers(&[
        ("content-type", "text/plain"),
        ("content-length", "5000"),
        ("accept-ranges", "bytes"),
        ("etag", "\"abc\""),
        ("vary", "Origin"),
    ]);
    rewrite_headers(&mut h, Encoding::Brotli);
    assert_eq!(h[CONTENT_ENCODING], "br");
    assert!(h.get(CONTENT_LENGTH).is_none() && h.get("accept-ranges").is_none());
    assert_eq!(h[ETAG], "W/\"abc\"");
    let vary: Vec<_> = h.get_all(VARY).iter().collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    assert_eq!(h[CONTENT_TYPE], "text/plain");
    // Already varying on it: unchanged; a weak ETag stays as it is.
    let mut h = headers(&[("vary", "accept-encoding"), ("etag", "W/\"x\"")]);
    rewrite_headers(&mut h, Encoding::Gzip);
    assert_eq!(h.get_all(VARY).iter().count(), 1);
    assert_eq!(h[ETAG], "W/\"x\"");
}

fn decode(enc: Encoding, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match enc {
        Encoding::Gzip => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("gunzip"),
        Encoding::Brotli => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .expect("unbrotli"),
    };
    out
}

#[test]
fn encoders_stream_and_round_trip() {
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes())
        .collect();
    for enc in [Encoding::Gzip, Encoding::Brotli] {
        let mut e = Encoder::new(enc, 5, Some(text.len() as u64));
        let mut out = Vec::new();
        for chunk in text.chunks(16 * 1024) {
            e.write(chunk).expect("write");
            out.extend_from_slice(&e.take());
        }
        out.extend_from_slice(&e.finish().expect("finish"));
        assert!(
            out.len() * 5 < text.len(),
            "{enc:?}: {} -> {}",
            text.len(),
            out.len()
        );
        assert_eq!(decode(enc, &out), text, "{enc:?}");
    }
}

#[test]
fn pooled_states_start_clean() {
    // Later streams reuse the deflate state and brotli buffers of earlier ones on this
    // thread: each must still decode to its own input.
    for round in 0..6 {
        let enc = if round % 2 == 0 {
            Encoding::Gzip
        } else {
            Encoding::Brotli
        };
        let text = format!("round {round}: ").repeat(500).into_bytes();
        let mut e = Encoder::new(enc, 5, None);
        e.write(&text[..700]).expect("write");
        e.flush().expect("flush");
        let mut out = e.take().to_vec();
        e.write(&text[700..]).expect("write");
        out.extend_from_slice(&e.take());
        out.extend_from_slice(&e.finish().expect("finish"));
        assert_eq!(decode(enc, &out), text, "round {round}");
    }
}

#[test]
fn small_bodies_get_gzip_when_the_client_takes_it() {
    let small = Some(BROTLI_MIN_SIZE - 1);
    assert_eq!(choose(Encoding::Brotli, true, small), Encoding::Gzip);
    assert_eq!(choose(Encoding::Brotli, false, small), Encoding::Brotli);
    assert_eq!(
        choose(Encoding::Brotli, true, Some(BROTLI_MIN_SIZE)),
        Encoding::Brotli
    );
    assert_eq!(choose(Encoding::Brotli, true, None), Encoding::Brotli);
    assert_eq!(choose(Encoding::Gzip, true, small), Encoding::Gzip);
}

#[test]
fn a_flush_makes_what_was_written_decodable_at_once() {
    for enc in [Encoding::Gzip, Encoding::Brotli] {
        let mut e = Encoder::new(enc, 5, None);
        e.write(b"data: first event\n\n").expect("write");
        e.flush().expect("flush");
        let first = e.take();
        assert!(!first.is_empty(), "{enc:?}");
        // A streaming decoder gets the event from the flushed bytes alone.
        let mut got = vec![0u8; 64];
        let n = match enc {
            Encoding::Gzip => flate2::read::GzDecoder::new(&first[..]).read(&mut got),
            Encoding::Brotli => brotli::Decompressor::new(&first[..], 4096).read(&mut got),
        }
        .expect("partial decode");
        assert_eq!(&got[..n], b"data: first event\n\n", "{enc:?}");
    }
}
