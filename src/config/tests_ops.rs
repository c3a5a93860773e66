//! Unit tests of the operations keys: `alerts`, `access_log` (and per pool or route
//! `compress` and `cache`): defaults, values, and errors at their LINE:COL.

use std::time::Duration;

use super::tests::{assert_error, load};
use super::tests_errors::BASE;
use super::{AccessLogFormat, AccessLogTarget, AlertKind};

#[test]
fn alerts_defaults_and_values() {
    let c = load(&format!(
        "{BASE}alerts: {{ webhook: \"http://127.0.0.1:9/hook\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let a = c.alerts.expect("alerts");
    assert_eq!(a.webhook.as_ref().map(|w| w.port), Some(9));
    assert_eq!(a.events, AlertKind::ALL.to_vec());
    assert_eq!(
        (a.batch, a.timeout, a.retries, a.backoff, a.certificate_days),
        (
            Duration::from_secs(2),
            Duration::from_secs(5),
            5,
            Duration::from_secs(1),
            14
        )
    );
    let yaml = format!(
        "{BASE}alerts:
  webhook: https://hooks.example.com/x
  events: [backend_down, pool_down, reload_failed]
  batch: 500ms
  retries: 2
  certificate_days: 30
  token_env: HOOK_TOKEN
"
    );
    let a = load(&yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .alerts
        .expect("alerts");
    assert!(
        a.webhook.as_ref().is_some_and(|w| w.https)
            && a.wants(AlertKind::PoolDown)
            && !a.wants(AlertKind::Scaling)
    );
    assert_eq!(
        (a.batch, a.retries, a.certificate_days),
        (Duration::from_millis(500), 2, 30)
    );
    assert_eq!(a.token_env.as_deref(), Some("HOOK_TOKEN"));
    assert!(load(BASE).expect("base").alerts.is_none());
}

#[test]
fn alerts_errors_point_at_the_value() {
    let yaml = format!("{BASE}alerts: {{ webhook: \"ftp://x/\" }}\n");
    assert_error(
        &yaml,
        "\"ftp://x/\"",
        "invalid webhook \"ftp://x/\": expected an http:// or https:// URL",
    );
    let yaml = format!(
        "{BASE}alerts: {{ webhook: \"http://x/\", events: [backend_down, backend_dwn] }}\n"
    );
    assert_error(
        &yaml,
        "backend_dwn",
        "unknown alert event \"backend_dwn\", expected one of: backend_down, backend_up",
    );
    let yaml = format!("{BASE}alerts: {{ events: [scaling] }}\n");
    assert_error(&yaml, "{ events", "alerts needs a webhook (e.g.");
    let yaml = format!("{BASE}alerts: {{ webhook: \"http://x/\", batch: 0s }}\n");
    assert_error(&yaml, "0s", "alerts batch must be greater than 0");
    let yaml = format!("{BASE}alerts: {{ webhook: \"http://x/\", retries: 99 }}\n");
    assert_error(&yaml, "99", "alerts retries must be at most 20");
    let yaml = format!("{BASE}alerts: {{ webhook: \"http://x/\", hook: 1 }}\n");
    assert_error(
        &yaml,
        "hook: 1",
        "unknown field \"hook\", expected one of: webhook, email, events",
    );
}

#[test]
fn access_log_defaults_and_values() {
    let c = load(&format!("{BASE}access_log:\n")).unwrap_or_else(|e| panic!("{e}"));
    let a = c.access_log.expect("access_log");
    assert_eq!(
        (a.format, &a.target, a.buffer),
        (AccessLogFormat::Json, &AccessLogTarget::Stdout, 16_384)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("autolb.yaml");
    let yaml =
        format!("{BASE}access_log: {{ format: combined, path: logs/access.log, buffer: 10 }}\n");
    let err = super::load_str(&yaml, &source).expect_err("no logs/ directory");
    assert!(err.to_string().contains("access_log directory"), "{err}");
    std::fs::create_dir(dir.path().join("logs")).expect("mkdir");
    let a = super::load_str(&yaml, &source)
        .unwrap_or_else(|e| panic!("{e}"))
        .access_log
        .expect("access_log");
    assert_eq!(a.format, AccessLogFormat::Combined);
    assert_eq!(
        a.target,
        AccessLogTarget::File(dir.path().join("logs/access.log"))
    );
    assert_eq!(a.buffer, 10);
    let a = load(&format!("{BASE}access_log: {{ path: stderr }}\n"))
        .expect("stderr")
        .access_log
        .expect("on");
    assert_eq!(a.target, AccessLogTarget::Stderr);
}

#[test]
fn access_log_errors_point_at_the_value() {
    let yaml = format!("{BASE}access_log: {{ format: xml }}\n");
    assert_error(
        &yaml,
        "xml",
        "unknown value \"xml\", expected one of: json, combined",
    );
    let yaml = format!("{BASE}access_log: {{ buffer: 0 }}\n");
    assert_error(
        &yaml,
        "0 }",
        "access_log buffer must be between 1 and 1048576 lines, got 0",
    );
    let yaml = format!("{BASE}access_log: {{ path: /nonexistent-dir-autolb/a.log }}\n");
    assert_error(
        &yaml,
        "/nonexistent",
        "access_log directory /nonexistent-dir-autolb does not exist",
    );
}

#[test]
fn compress_on_pools_and_routes() {
    use super::Encoding;
    let yaml = BASE.replace(
        "  web:\n",
        "  web:\n    compress: { types: [text/*, application/json], min_size: 100, level: 9, algorithms: [gzip] }\n",
    );
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let z = c.pools[0].compress.as_ref().expect("compress");
    assert_eq!(z.types, ["text/*", "application/json"]);
    assert_eq!((z.min_size, z.level), (100, 9));
    assert_eq!(z.algorithms, [Encoding::Gzip]);
    let yaml = format!("{BASE}routes:\n  - {{ path_prefix: /api, pool: web, compress: {{}} }}\n");
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let z = c.routes[0].compress.as_ref().expect("route compress");
    assert_eq!((z.min_size, z.level), (1024, 5));
    assert_eq!(z.algorithms, [Encoding::Brotli, Encoding::Gzip]);
    assert!(z.types.iter().any(|t| t == "text/html"));
    assert!(c.pools[0].compress.is_none());
}

#[test]
fn compress_errors_point_at_the_value() {
    let with = |c: &str| BASE.replace("  web:\n", &format!("  web:\n    compress: {c}\n"));
    assert_error(
        &with("{ level: 11 }"),
        "11",
        "compress level must be between 1 and 9, got 11",
    );
    assert_error(
        &with("{ types: [text/html, html] }"),
        "html]",
        "invalid media type \"html\" in compress types",
    );
    assert_error(
        &with("{ algorithms: [zstd] }"),
        "zstd",
        "unknown value \"zstd\", expected one of: br, gzip",
    );
    assert_error(
        &with("{ algorithms: [] }"),
        "[]",
        "compress algorithms must not be empty",
    );
    assert_error(
        &with("{ min: 1 }"),
        "min: 1",
        "unknown field \"min\", expected one of: types, min_size, level, algorithms",
    );
}

#[test]
fn email_alerts_defaults_values_and_errors() {
    let yaml = format!(
        "{BASE}alerts:
  email: {{ smtp: \"mail.example.com:587\", from: \"autolb <lb@example.com>\", to: [ops@example.com] }}
"
    );
    let a = load(&yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .alerts
        .expect("alerts");
    assert!(a.webhook.is_none());
    let e = a.email.expect("email");
    assert_eq!((e.host.as_str(), e.port), ("mail.example.com", 587));
    assert_eq!(e.starttls, super::StartTls::Auto);
    assert_eq!(
        (e.min_interval, e.timeout),
        (Duration::from_secs(60), Duration::from_secs(30))
    );
    assert_eq!(e.to, ["ops@example.com"]);
    assert!(e.username_env.is_none() && e.password_env.is_none());

    let yaml = format!(
        "{BASE}alerts:
  webhook: http://x/
  email:
    smtp: \"127.0.0.1\"
    from: lb@example.com
    to: [a@example.com, \"B <b@example.com>\"]
    starttls: never
    username_env: SMTP_USER
    password_env: SMTP_PASS
    min_interval: 5m
"
    );
    let e = load(&yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .alerts
        .and_then(|a| a.email)
        .expect("email");
    assert_eq!((e.port, e.starttls), (25, super::StartTls::Never));
    assert_eq!(e.min_interval, Duration::from_secs(300));
    assert_eq!(e.password_env.as_deref(), Some("SMTP_PASS"));

    let yaml =
        format!("{BASE}alerts: {{ email: {{ smtp: \"x:0\", from: a@b.c, to: [a@b.c] }} }}\n");
    assert_error(&yaml, "\"x:0\"", "invalid smtp \"x:0\"");
    let yaml =
        format!("{BASE}alerts: {{ email: {{ smtp: x, from: not-an-address, to: [a@b.c] }} }}\n");
    assert_error(&yaml, "not-an-address", "invalid from address");
    let yaml = format!("{BASE}alerts: {{ email: {{ smtp: x, from: a@b.c, to: [] }} }}\n");
    assert_error(&yaml, "{ smtp", "alerts email needs to:");
    let yaml = format!(
        "{BASE}alerts: {{ email: {{ smtp: x, from: a@b.c, to: [a@b.c], starttls: yes }} }}\n"
    );
    assert_error(&yaml, "yes", "unknown starttls \"yes\"");
    let yaml = format!(
        "{BASE}alerts: {{ email: {{ smtp: x, from: a@b.c, to: [a@b.c], username_env: U }} }}\n"
    );
    assert_error(&yaml, "U }", "both username_env and password_env");
    let yaml =
        format!("{BASE}alerts: {{ email: {{ smtp: x, from: a@b.c, to: [a@b.c], port: 25 }} }}\n");
    assert_error(&yaml, "port", "unknown field");
}

#[test]
fn cache_on_pools_and_routes() {
    let yaml = BASE.replace(
        "  web:\n",
        "  web:\n    cache: { max_size: 64MiB, max_object: 512KiB, default_ttl: 30s, stale_while_revalidate: 0s, stale_if_error: 5m, x_cache: false }\n",
    );
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let z = c.pools[0].cache.as_ref().expect("cache");
    assert_eq!((z.max_size, z.max_object), (64 << 20, 512 << 10));
    assert_eq!(z.default_ttl, Duration::from_secs(30));
    assert_eq!(z.stale_while_revalidate, Duration::ZERO);
    assert_eq!(z.stale_if_error, Duration::from_secs(300));
    assert!(!z.x_cache);
    let yaml = format!("{BASE}routes:\n  - {{ path_prefix: /api, pool: web, cache: {{}} }}\n");
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].cache, Some(super::Cache::default()));
    assert!(c.pools[0].cache.is_none());
}

#[test]
fn cache_errors_point_at_the_value() {
    let with = |c: &str| BASE.replace("  web:\n", &format!("  web:\n    cache: {c}\n"));
    assert_error(
        &with("{ max_size: lots }"),
        "lots",
        "cache max_size must be a size between 65536 and 1099511627776 bytes",
    );
    assert_error(
        &with("{ max_size: 1MiB, max_object: 2MiB }"),
        "2MiB",
        "cache max_object (2097152 bytes) must not exceed max_size (1048576 bytes)",
    );
    assert_error(
        &with("{ default_ttl: 2y }"),
        "2y",
        "cache default_ttl must be at most 365 days",
    );
    assert_error(
        &with("{ ttl: 1s }"),
        "ttl: 1s",
        "unknown field \"ttl\", expected one of: max_size, max_object, default_ttl",
    );
}
