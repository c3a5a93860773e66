//! Fuzzing on stable Rust (proptest): the config parser, request-head validation and the
//! HTTP/1 framer, the sticky-cookie decoder, the PROXY-protocol parser and the ClientHello
//! SNI reader, the own HTTP/1.1 client's response-head parser and chunked decoder, and path
//! and Host normalization (which must also be idempotent) get random and mutated inputs;
//! `tests/corpus/` (one directory per target) is replayed on every run and seeds the
//! mutations. Nothing may panic.

use std::path::{Path, PathBuf};

use autolb::affinity::cookie::CookieCodec;
use autolb::config::Limits;
use autolb::server::h1_gate::Framer;
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect()
}

fn config(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = autolb::config::load_str(&text, Path::new("fuzz.yaml"));
}

fn head(input: &[u8]) {
    let _ = autolb::proxy::validate::check_head(input);
    let mut framer = Framer::new(&Limits::default());
    let mut out = Vec::new();
    for piece in input.chunks(7) {
        framer.feed(piece, &mut out);
    }
    // What hyper sees is never longer than what came in plus one added header or the
    // refusal line.
    assert!(out.len() <= input.len() + 64);
}

fn cookie(input: &[u8]) {
    let codec = CookieCodec::new(b"fuzz-secret", "web");
    let _ = codec.decode(input);
    let good = codec.encode(7, 1_700_000_000);
    assert_eq!(codec.decode(good.as_bytes()), Some((7, 1_700_000_000)));
}

fn proxy(input: &[u8]) {
    let _ = autolb::proxy_proto::parse(input);
}

fn sni(input: &[u8]) {
    let _ = autolb::l4::sni::parse(input);
}

/// A backend's response head: parsed or refused, and what is left is exactly the rest.
fn response(input: &[u8]) {
    use autolb::upstream::parse_response_head;
    for head_request in [false, true] {
        let mut buf = bytes::BytesMut::from(input);
        if let Ok(Some((parts, _framing))) = parse_response_head(&mut buf, head_request) {
            assert!(buf.len() < input.len());
            assert!(parts.headers.len() <= 100);
        }
    }
}

/// A chunked body: the same answer however it is split.
fn chunked(input: &[u8]) {
    use autolb::upstream::decode_chunked_body;
    let whole = decode_chunked_body(input, input.len().max(1)).ok();
    for piece in [1, 3] {
        let split = decode_chunked_body(input, piece).ok();
        if let (Some(a), Some(b)) = (&whole, &split) {
            assert_eq!(a, b, "split in pieces of {piece}");
        }
    }
}

/// Every policy `normalize:` can express.
fn policies() -> Vec<autolb::uri::Policy> {
    use autolb::uri::{EscapedSlashes, Policy};
    let mut all = Vec::new();
    for merge_slashes in [true, false] {
        for escaped_slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            all.push(Policy {
                merge_slashes,
                escaped_slashes,
                forward_original: false,
            });
        }
    }
    all
}

/// Path normalization of each line: idempotent (the normal form comes back borrowed, that
/// is without an allocation), and the normal form has no dot segment, no merged-away
/// slashes, no lower-case escape and nothing outside ASCII.
fn paths(input: &[u8]) {
    use std::borrow::Cow;
    let policies = policies();
    for line in input.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        for policy in &policies {
            let Ok(once) = autolb::uri::path::normalize(&line, policy) else {
                continue;
            };
            let twice = autolb::uri::path::normalize(&once, policy);
            assert!(
                matches!(twice, Ok(Cow::Borrowed(t)) if t == once),
                "{line:?} under {policy:?}: {once:?}, then {twice:?}"
            );
            assert!(once.starts_with('/') && once.is_ascii(), "{once:?}");
            for segment in once.split('/').skip(1) {
                assert!(segment != "." && segment != "..", "{line:?}: {once:?}");
            }
            if policy.merge_slashes {
                assert!(!once.contains("//"), "{line:?}: {once:?}");
            }
            let bytes = once.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'%' {
                    let hex = &bytes[i + 1..i + 3];
                    assert!(
                        hex.iter().all(|h| matches!(h, b'0'..=b'9' | b'A'..=b'F')),
                        "{once:?}"
                    );
                }
            }
        }
    }
}

/// Host normalization of each line: idempotent, lower case, no trailing dot.
fn hosts(input: &[u8]) {
    use std::borrow::Cow;
    for line in input.split(|b| *b == b'\n') {
        let Ok(once) = autolb::uri::host::authority(line) else {
            continue;
        };
        let twice = autolb::uri::host::authority(once.as_bytes());
        assert!(
            matches!(twice, Ok(Cow::Borrowed(t)) if t == once),
            "{once:?}: {twice:?}"
        );
        let host = autolb::uri::host::without_port(&once);
        assert!(
            !host.ends_with('.') && !host.bytes().any(|b| b.is_ascii_uppercase()),
            "{once:?}"
        );
    }
}

type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("config", config),
    ("head", head),
    ("cookie", cookie),
    ("proxy", proxy),
    ("sni", sni),
    ("response", response),
    ("chunked", chunked),
    ("paths", paths),
    ("hosts", hosts),
];

#[test]
fn corpus_replays_without_panics() {
    for (target, run) in TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "tests/corpus/{target} is empty");
        for seed in seeds {
            run(&seed);
        }
    }
}

/// A corpus seed of `target` with a few bytes overwritten, inserted or cut.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    (
        0..seeds.len(),
        prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut v = seeds[i].clone();
            for (at, byte, op) in edits {
                let at = if v.is_empty() {
                    0
                } else {
                    at as usize % (v.len() + 1)
                };
                match op {
                    0 if at < v.len() => v[at] = byte,
                    1 => v.insert(at, byte),
                    _ if at < v.len() => {
                        v.truncate(at.max(1).min(v.len()));
                    }
                    _ => v.push(byte),
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics(input in prop_oneof![mutated("config"), prop::collection::vec(any::<u8>(), 0..256)]) {
        config(&input);
    }

    #[test]
    fn yaml_shaped_configs_never_panic(input in "(listeners|pools|limits|rate_limit|admin|routes|[a-z_]{1,8}|:|-|\\{|\\}|\\[|\\]|,| |\n|[0-9]{1,6}|\"[^\"]{0,8}\"|&a|\\*a|!!str){0,60}") {
        config(input.as_bytes());
    }

    #[test]
    fn head_validation_never_panics(input in prop_oneof![mutated("head"), prop::collection::vec(any::<u8>(), 0..512)]) {
        head(&input);
    }

    #[test]
    fn text_heads_never_panic(input in "(GET|POST|G\\(T|PRI) (/|\\*|http://a/)[ -~]{0,20} HTTP/1\\.[01]\r?\n((Host|Content-Length|Transfer-Encoding|X)[ \t]?:[ \t]?[ -~\t\r\n\\x00]{0,12}\r?\n){0,6}\r?\n[0-9a-fA-F;=\r\n ]{0,40}") {
        head(input.as_bytes());
    }

    #[test]
    fn cookie_decoder_never_panics(input in prop_oneof![mutated("cookie"), prop::collection::vec(any::<u8>(), 0..128), "[A-Za-z0-9_.=-]{0,80}".prop_map(String::into_bytes)]) {
        cookie(&input);
    }

    #[test]
    fn proxy_protocol_parser_never_panics(input in prop_oneof![mutated("proxy"), prop::collection::vec(any::<u8>(), 0..256)]) {
        proxy(&input);
    }

    #[test]
    fn sni_reader_never_panics(input in prop_oneof![mutated("sni"), prop::collection::vec(any::<u8>(), 0..512)]) {
        sni(&input);
    }

    #[test]
    fn response_heads_never_panic(input in prop_oneof![mutated("response"), prop::collection::vec(any::<u8>(), 0..256)]) {
        response(&input);
    }

    #[test]
    fn path_normalization_is_idempotent(input in prop_oneof![
        mutated("paths"),
        "(/|//|\\.|\\.\\.|%2[eEfF]|%5[cC]|%[0-9a-fA-F]{0,2}|\\\\|;|[a-z]{1,3}|\u{e9}|%00|%41|\\?){0,24}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ]) {
        paths(&input);
    }

    #[test]
    fn host_normalization_is_idempotent(input in prop_oneof![
        mutated("hosts"),
        "([a-zA-Z0-9]{0,4}|\\.|:|[0-9]{1,6}|@|,| |\\[|\\]|_|-|\u{e9}){0,12}".prop_map(String::into_bytes),
    ]) {
        hosts(&input);
    }

    #[test]
    fn chunked_bodies_never_panic(input in prop_oneof![mutated("chunked"), "([0-9a-fA-F]{0,17}(;[ -~]{0,6})?\r?\n[a-z]{0,20}\r?\n){0,5}(0\r\n([A-Za-z-]{1,5}: [ -~\x00]{0,5}\r\n)?\r\n)?".prop_map(String::into_bytes)]) {
        chunked(&input);
    }
}
