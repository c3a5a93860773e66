//! Unit tests of the shutdown, retry, slow start, panic, health-check and outlier settings:
//! derived defaults, and each rule's error at its LINE:COL.

use std::time::Duration;

use super::tests::{assert_error, assert_error_after, assert_error_nth, errors, load, FILE};
use super::tests_errors::{with_pool, BASE};
use super::{HealthCheck, Outlier, RetryOn};

fn health_of(extra: &str) -> HealthCheck {
    let c = load(&with_pool(extra)).unwrap_or_else(|e| panic!("{e}"));
    c.pools[0].health_check.clone().expect("health check")
}

fn outlier_of(extra: &str) -> Outlier {
    let c = load(&with_pool(extra)).unwrap_or_else(|e| panic!("{e}"));
    c.pools[0].outlier.clone().expect("outlier")
}

#[test]
fn derived_defaults() {
    // The default timeout (1s) shrinks to a shorter interval; an equal timeout is fine.
    let hc = health_of("    health_check: { interval: 500ms }\n");
    assert_eq!(hc.timeout, Duration::from_millis(500));
    let hc = health_of("    health_check: { interval: 2s, timeout: 2s }\n");
    assert_eq!(hc.timeout, Duration::from_secs(2));
    // max_ejection defaults to 300s, or to a longer ejection.
    let o = outlier_of("    outlier: { ejection: 10m }\n");
    assert_eq!(o.max_ejection, Duration::from_secs(600));
    let o = outlier_of("    outlier: { ejection: 1m, max_ejection: 1m }\n");
    assert_eq!(o.max_ejection, Duration::from_secs(60));
    let hc = health_of("    health_check: { host: \"[::1]:8080\", expected_status: [\"204\"] }\n");
    assert_eq!(hc.host.as_deref(), Some("[::1]:8080"));
    assert_eq!(hc.expected_status, vec![(204, 204)]);
    let c = load(&with_pool(
        "    retry_on: []\n    retry_methods: [get, GET, m-search]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = &c.pools[0];
    assert_eq!(
        p.retry_on,
        RetryOn {
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: vec![],
            grpc: vec![]
        }
    );
    let methods: Vec<&str> = p.retry_methods.iter().map(|m| m.as_str()).collect();
    assert_eq!(methods, ["GET", "M-SEARCH"]);
}

#[test]
fn shutdown_grace() {
    let yaml = format!("shutdown_grace: 0s\n{BASE}");
    assert_error(&yaml, "0s", "shutdown_grace must be greater than 0");
    let yaml = format!("{BASE}shutdown_grace: soon\n");
    assert_error(&yaml, "soon", "invalid duration \"soon\"");
}

#[test]
fn retry_methods() {
    let yaml = with_pool("    retry_methods: [GET, \"GE T\", \"\"]\n");
    assert_error(
        &yaml,
        "\"GE T\"",
        "invalid HTTP method \"GE T\" in retry_methods",
    );
    assert_error(&yaml, "\"\"", "invalid HTTP method \"\" in retry_methods");
    let yaml = with_pool("    retry_methods: GET\n");
    assert_error_after(&yaml, "retry_methods: ", "expected a sequence");
}

#[test]
fn retry_on() {
    let yaml = with_pool("    retry_on: [connect_failure, sometimes, 404, 600, \"50x\"]\n");
    assert_error(&yaml, "sometimes", "unknown retry_on item \"sometimes\"");
    assert_error(
        &yaml,
        "404",
        "retry_on status must be between 500 and 599, got 404",
    );
    assert_error(
        &yaml,
        "600",
        "retry_on status must be between 500 and 599, got 600",
    );
    assert_error(&yaml, "\"50x\"", "unknown retry_on item \"50x\"");
    assert_eq!(errors(&yaml).len(), 4);
    let yaml = with_pool("    retry_on: [reset, true]\n");
    assert_error(&yaml, "true", "expected a string or an integer, got true");
}

#[test]
fn slow_start_and_panic_threshold() {
    let yaml = with_pool("    slow_start: 0s\n");
    assert_error(&yaml, "0s", "slow_start must be greater than 0");
    let yaml = with_pool("    panic_threshold: 101\n");
    assert_error(
        &yaml,
        "101",
        "panic_threshold must be between 0 and 100, got 101",
    );
    let yaml = with_pool("    panic_threshold: -1\n");
    assert_error(&yaml, "-1", "expected a non-negative integer, got -1");
}

#[test]
fn health_check_host_and_port() {
    for host in [
        "\"a b\"",
        "user@example.com",
        "\"a/b\"",
        "\"example.com:x\"",
        "\"example.com:0\"",
        "\":80\"",
        "\"\"",
    ] {
        let yaml = with_pool(&format!("    health_check: {{ host: {host} }}\n"));
        assert_error(&yaml, host, "invalid health_check host");
    }
    let yaml = with_pool("    health_check: { port: 0 }\n");
    assert_error_after(
        &yaml,
        "port: ",
        "health_check port must be between 1 and 65535, got 0",
    );
    let yaml = with_pool("    health_check: { port: 70000 }\n");
    assert_error(
        &yaml,
        "70000",
        "health_check port must be between 1 and 65535, got 70000",
    );
}

#[test]
fn health_check_expected_status() {
    let yaml = with_pool(
        "    health_check:\n      expected_status: [200, 99, 600, \"399-200\", \"2xx\", \"100-700\"]\n",
    );
    assert_error(
        &yaml,
        "99",
        "expected_status must be between 100 and 599, got 99",
    );
    assert_error(
        &yaml,
        "600",
        "expected_status must be between 100 and 599, got 600",
    );
    assert_error(
        &yaml,
        "\"399-200\"",
        "invalid expected_status \"399-200\": 399 is greater than 200",
    );
    assert_error(
        &yaml,
        "\"2xx\"",
        "invalid expected_status \"2xx\", expected a status like 200",
    );
    assert_error(&yaml, "\"100-700\"", "statuses must be between 100 and 599");
    assert_eq!(errors(&yaml).len(), 5);
    let yaml = with_pool("    health_check: { expected_status: [] }\n");
    assert_error(&yaml, "[]", "expected_status must list at least one status");
}

#[test]
fn health_check_timeout_must_fit_the_interval() {
    let yaml = with_pool("    health_check: { interval: 1s, timeout: 1500ms }\n");
    assert_error(
        &yaml,
        "1500ms",
        "health_check timeout 1s 500ms exceeds interval 1s",
    );
    // An invalid interval reports only itself.
    let yaml = with_pool("    health_check: { interval: 0s, timeout: 5s }\n");
    assert_eq!(errors(&yaml).len(), 1);
}

#[test]
fn outlier_rules() {
    let yaml = with_pool("    outlier: { ejection: 1m, max_ejection: 30s }\n");
    assert_error(
        &yaml,
        "30s",
        "outlier max_ejection 30s is shorter than ejection 1m",
    );
    let yaml = with_pool("    outlier: { max_ejection_percent: 150 }\n");
    assert_error(
        &yaml,
        "150",
        "outlier max_ejection_percent must be between 0 and 100, got 150",
    );
    let yaml = with_pool("    outlier: { count: [reset, 4xx, 5xx] }\n");
    assert_error(
        &yaml,
        "4xx",
        "unknown outlier count item \"4xx\", expected one of: connect_failure, reset, timeout, 5xx",
    );
    let yaml = with_pool("    outlier: { count: [] }\n");
    assert_error(
        &yaml,
        "[]",
        "outlier count must list at least one failure kind",
    );
}

#[test]
fn new_keys_are_known_and_errors_carry_line_and_column() {
    let yaml = with_pool("    retry_on: [reset, 404]\n    outlier:\n      count: [5xx, other]\n");
    let errs: Vec<String> = errors(&yaml).iter().map(|e| e.to_string()).collect();
    assert_eq!(
        errs,
        [
            format!("{FILE}:9:23: retry_on status must be between 500 and 599, got 404"),
            format!(
                "{FILE}:11:20: unknown outlier count item \"other\", expected one of: \
                 connect_failure, reset, timeout, 5xx"
            ),
        ]
    );
    let yaml = BASE.replace("  web:\n", "  web:\n    slow_starts: 1s\n");
    assert_error_nth(&yaml, "slow_starts", 0, "expected one of: balance");
}
