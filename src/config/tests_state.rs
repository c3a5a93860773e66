//! Unit tests of `state:`: Redis seeds, Sentinel, TLS and password_env, each error at its
//! LINE:COL.

use std::path::PathBuf;

use super::tests::{assert_error, load};
use super::tests_errors::BASE;
use super::{redact, Redis, RedisTls, Sentinel, State};

fn state(yaml_state: &str) -> String {
    format!("{BASE}state:\n{yaml_state}")
}

fn redis(yaml_state: &str) -> Redis {
    match load(&state(yaml_state))
        .unwrap_or_else(|e| panic!("{e}"))
        .state
    {
        State::Redis(r) => r,
        State::Memory => panic!("memory"),
    }
}

#[test]
fn seeds_sentinel_tls_and_password_env() {
    let r = redis(
        "  backend: redis\n  redis:\n    urls: [\"redis://u:pw@10.0.0.1:7000\", \"redis://u:pw@10.0.0.2:7000\"]\n    password_env: REDIS_PASSWORD\n",
    );
    assert_eq!(r.urls.len(), 2);
    assert_eq!(r.password_env.as_deref(), Some("REDIS_PASSWORD"));
    assert_eq!((r.tls, r.sentinel), (None, None));
    // Debug never prints the password.
    assert!(!format!(
        "{:?}",
        redis("  backend: redis\n  redis: { url: \"redis://u:pw@h:1\" }\n")
    )
    .contains("pw"));

    let r = redis(
        "  backend: redis\n  redis:\n    url: \"rediss://h.example:6380\"\n    tls: { ca: ca.pem, client_cert: c.pem, client_key: k.pem, sni: Redis.Internal }\n",
    );
    assert_eq!(
        r.tls,
        Some(RedisTls {
            ca: Some(PathBuf::from("conf/ca.pem")),
            client_cert: Some(PathBuf::from("conf/c.pem")),
            client_key: Some(PathBuf::from("conf/k.pem")),
            sni: Some("redis.internal".into()),
        })
    );
    // rediss:// alone: TLS with the system's CA bundle.
    let r = redis("  backend: redis\n  redis: { url: \"rediss://h:6380\" }\n");
    assert_eq!(r.tls, Some(RedisTls::default()));

    let r = redis(
        "  backend: redis\n  redis:\n    sentinels: [\"10.0.0.1:26379\", \"[::1]:26380\"]\n    master_name: mymaster\n    tls: { ca: ca.pem }\n",
    );
    assert_eq!(
        r.sentinel,
        Some(Sentinel {
            sentinels: vec!["10.0.0.1:26379".into(), "[::1]:26380".into()],
            master_name: "mymaster".into(),
        })
    );
    assert!(r.urls.is_empty() && r.tls.is_some());
    assert_eq!(redact("rediss://u:pw@h:1"), "rediss://***@h:1");
    assert_eq!(redact("redis://h:1"), "redis://h:1");
}

#[test]
fn redis_errors_point_at_the_key() {
    assert_error(
        &state("  backend: redis\n"),
        "redis",
        "state backend redis needs redis.url",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"http://x\" }\n"),
        "\"http://x\"",
        "invalid redis url",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1\", urls: [\"redis://b:1\"] }\n"),
        "[\"redis://b",
        "set either url (one seed) or urls (several), not both",
    );
    assert_error(
        &state("  backend: redis\n  redis: { urls: [] }\n"),
        "[]",
        "urls must list at least one",
    );
    assert_error(
        &state("  backend: redis\n  redis: { urls: [\"redis://a:1\", \"rediss://b:1\"] }\n"),
        "\"rediss://b:1\"",
        "urls mix redis:// and rediss://",
    );
    assert_error(
        &state("  backend: redis\n  redis: { urls: [\"redis://u:x@a:1\", \"redis://u:y@b:1\"] }\n"),
        "\"redis://u:y@b:1\"",
        "urls must carry the same user and password",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1/3\" }\n"),
        "\"redis://a:1/3\"",
        "autolb uses database 0",
    );
    assert_error(
        &state("  backend: redis\n  redis: { sentinels: [\"s:26379\"] }\n"),
        "[\"s:",
        "sentinels need master_name",
    );
    assert_error(
        &state("  backend: redis\n  redis: { master_name: m }\n"),
        "m }",
        "master_name needs sentinels",
    );
    assert_error(
        &state("  backend: redis\n  redis: { sentinels: [\"s\"], master_name: m }\n"),
        "\"s\"",
        "invalid sentinel \"s\" (expected host:port)",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1\", sentinels: [\"s:1\"], master_name: m }\n"),
        "{ url",
        "set either url/urls (standalone or Redis Cluster) or sentinels, not both",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1\", tls: { ca: ca.pem } }\n"),
        "{ ca",
        "tls needs rediss:// URLs",
    );
    assert_error(
        &state(
            "  backend: redis\n  redis: { url: \"rediss://a:1\", tls: { client_cert: c.pem } }\n",
        ),
        "c.pem",
        "client_cert needs client_key",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"rediss://a:1\", tls: { sni: \"a b\" } }\n"),
        "\"a b\"",
        "invalid sni",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1\", password_env: \"1X\" }\n"),
        "\"1X\"",
        "invalid password_env",
    );
    assert_error(
        &state("  backend: redis\n  redis: { url: \"redis://a:1\", password: x }\n"),
        "password:",
        "unknown field \"password\"",
    );
}

#[test]
fn relative_tls_paths_resolve_against_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autolb.yaml");
    let text = state(
        "  backend: redis\n  redis:\n    url: \"rediss://h:6380\"\n    tls: { ca: certs/ca.pem, client_cert: /abs/c.pem, client_key: k.pem }\n",
    );
    let c = super::load_str(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let State::Redis(r) = c.state else {
        panic!("memory")
    };
    let tls = r.tls.expect("tls");
    assert_eq!(tls.ca, Some(dir.path().join("certs/ca.pem")));
    assert_eq!(tls.client_cert, Some(PathBuf::from("/abs/c.pem")));
}
