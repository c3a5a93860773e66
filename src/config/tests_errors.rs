//! Unit tests of config errors: each error kind at its LINE:COL, several errors at once,
//! YAML syntax errors and empty files.

use super::tests::{
    assert_error, assert_error_after, assert_error_nth, errors, load, pos_of_nth, FILE,
};
use super::{ConfigError, ConfigErrors};

/// A valid config the tests below break in one place.
pub(super) const BASE: &str = "\
listeners:
  - name: web
    listen: 127.0.0.1:8080
    pool: web
pools:
  web:
    backends:
      - address: 127.0.0.1:3001
";

pub(super) fn with_pool(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn base_is_valid() {
    load(BASE).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_keys_point_at_the_key() {
    let yaml = BASE.replace("  web:\n", "  web:\n    balanse: p2c\n");
    assert_error(
        &yaml,
        "balanse",
        "unknown field \"balanse\", expected one of: balance",
    );
    let yaml = format!("{BASE}colour: red\n");
    assert_error(
        &yaml,
        "colour",
        "unknown field \"colour\", expected one of: threads",
    );
    let yaml = BASE.replace("    pool: web\n", "    pool: web\n    tls_mode: x\n");
    assert_error(&yaml, "tls_mode", "unknown field \"tls_mode\"");
    let yaml = with_pool("        wieght: 2\n");
    assert_error(&yaml, "wieght", "unknown field \"wieght\"");
}

#[test]
fn wrong_types_point_at_the_value() {
    let yaml = with_pool("    retries: many\n");
    assert_error(
        &yaml,
        "many",
        "expected a non-negative integer, got string \"many\"",
    );
    let yaml = format!("threads: [1]\n{BASE}");
    assert_error(&yaml, "[1]", "expected a non-negative integer, got a list");
    let yaml = BASE.replace("    pool: web\n", "    pool: web\n    protocol: htp\n");
    assert_error(
        &yaml,
        "htp",
        "unknown value \"htp\", expected one of: http, https, tcp",
    );
    let yaml = BASE.replace("    backends:", "    balance: fastest\n    backends:");
    assert_error(&yaml, "fastest", "unknown value \"fastest\"");
    let yaml = with_pool("        weight: -1\n");
    assert_error(&yaml, "-1", "expected a non-negative integer, got -1");
    let yaml = "listeners: web\n";
    assert_error(yaml, "web", "expected a list of listeners, got a string");
}

#[test]
fn missing_field_points_at_the_item() {
    let yaml = BASE.replace("    listen: 127.0.0.1:8080\n", "");
    assert_error(&yaml, "name: web", "missing field \"listen\"");
}

#[test]
fn bad_durations_point_at_the_value() {
    let yaml = with_pool("    health_check: { interval: 2x }\n");
    assert_error(&yaml, "2x", "invalid duration \"2x\"");
    let yaml = with_pool("    timeouts:\n      connect: 5\n");
    assert_error_after(&yaml, "connect: ", "invalid duration \"5\"");
    let yaml = with_pool("    timeouts: { response: 0s }\n");
    assert_error(&yaml, "0s", "timeouts.response must be greater than 0");
    let yaml = BASE.replace("    pool: web\n", "    pool: web\n    idle_timeout: 0ms\n");
    assert_error(&yaml, "0ms", "idle_timeout must be greater than 0");
}

#[test]
fn unknown_pools() {
    let yaml = format!("{BASE}  api:\n    backends: [{{ address: 127.0.0.1:3002 }}]\nroutes:\n  - {{ path_prefix: /v1, pool: apii }}\n");
    assert_error(&yaml, "apii", "unknown pool \"apii\" (known: web, api)");
    let yaml = BASE.replace("    pool: web\n", "    pool: wbe\n");
    assert_error(&yaml, "wbe", "unknown pool \"wbe\" (known: web)");
}

#[test]
fn address_collisions() {
    let yaml = BASE.replace(
        "pools:",
        "  - { name: b, listen: 127.0.0.1:8080, pool: web }\npools:",
    );
    assert_error_nth(
        &yaml,
        "127.0.0.1:8080",
        1,
        "listener \"b\" uses address 127.0.0.1:8080 already used by listener \"web\"",
    );
    let yaml = BASE.replace(
        "pools:",
        "  - { name: b, listen: 0.0.0.0:8080, pool: web }\npools:",
    );
    assert_error(
        &yaml,
        "0.0.0.0:8080",
        "overlapping 127.0.0.1:8080 of listener \"web\"",
    );
    let yaml = format!("admin: {{ listen: 127.0.0.1:8080 }}\n{BASE}");
    assert_error(
        &yaml,
        "127.0.0.1:8080",
        "admin address 127.0.0.1:8080 already used by listener \"web\"",
    );
    let yaml = BASE.replace("127.0.0.1:8080", "127.0.0.1:9001");
    assert_error(&yaml, "127.0.0.1:9001", "already used by the admin port");
    let yaml = format!("admin: {{ listen: 0.0.0.0:9001 }}\n{BASE}");
    assert_error(&yaml, "0.0.0.0:9001", "not loopback: set admin.token_env");
    let yaml = BASE.replace("127.0.0.1:8080", "localhost:8080");
    assert_error(
        &yaml,
        "localhost:8080",
        "invalid listen address \"localhost:8080\"",
    );
}

#[test]
fn duplicate_listener_names() {
    let yaml = BASE.replace(
        "pools:",
        "  - name: web\n    listen: 127.0.0.1:8081\n    pool: web\npools:",
    );
    assert_error(
        &yaml,
        "web\n    listen: 127.0.0.1:8081",
        "duplicate listener name \"web\" (first at line 2)",
    );
}

#[test]
fn weights() {
    let yaml = with_pool("        weight: 0\n");
    assert_error_after(&yaml, "weight: ", "weight must be between 1 and 256, got 0");
    let yaml = with_pool("        weight: 300\n");
    assert_error_after(
        &yaml,
        "weight: ",
        "weight must be between 1 and 256, got 300",
    );
}

#[test]
fn pools_without_backends_and_empty_names() {
    let yaml = format!("{BASE}  api: {{ retries: 1 }}\n");
    assert_error(
        &yaml,
        "api",
        "pool \"api\" has no backends and no autoscale",
    );
    let yaml = format!("{BASE}  \"\":\n    backends: [{{ address: 127.0.0.1:3002 }}]\n");
    assert_error(&yaml, "\"\"", "pool name must not be empty");
}

#[test]
fn backend_addresses() {
    let yaml = BASE.replace("127.0.0.1:3001", "nonexistent.invalid:80");
    assert_error(
        &yaml,
        "nonexistent",
        "backend address \"nonexistent.invalid:80\" does not resolve",
    );
    let yaml = BASE.replace("127.0.0.1:3001", "127.0.0.1");
    assert_error(&yaml, "127.0.0.1\n", "has no port");
    let yaml = BASE.replace("127.0.0.1:3001", "http://127.0.0.1:3001");
    assert_error(&yaml, "http://", "no scheme or path");
    let yaml = with_pool("      - address: 127.0.0.1:3002\n      - address: 127.0.0.1:3001\n");
    assert_error_nth(
        &yaml,
        "127.0.0.1:3001",
        1,
        "duplicate backend 127.0.0.1:3001 in pool \"web\" (first at line 8)",
    );
}

#[test]
fn tls_rules() {
    let yaml = BASE.replace("    pool: web\n", "    pool: web\n    protocol: https\n");
    assert_error(&yaml, "https", "https listener \"web\" needs tls");
    let yaml = BASE.replace(
        "    pool: web\n",
        "    pool: web\n    tls:\n      certificates: [{ cert: a, key: b }]\n",
    );
    assert_error(
        &yaml,
        "certificates",
        "tls is only allowed on https listeners",
    );
    let yaml = BASE.replace(
        "    pool: web\n",
        "    pool: web\n    protocol: https\n    tls: { certificates: [] }\n",
    );
    assert_error(&yaml, "[]", "tls needs at least one certificate");
    let yaml = BASE.replace(
        "    pool: web\n",
        "    pool: web\n    protocol: https\n    tls: { certificates: [{cert: a, key: b}], alpn: [h3] }\n",
    );
    assert_error(&yaml, "h3", "unsupported alpn protocol \"h3\"");
}

#[test]
fn listeners_without_pool() {
    let yaml = BASE.replace("    pool: web\n", "    protocol: tcp\n");
    assert_error(&yaml, "name: web", "tcp listener \"web\" needs a pool");
    let yaml = BASE.replace("    pool: web\n", "");
    assert_error(
        &yaml,
        "name: web",
        "listener \"web\" has no pool and no routes are defined",
    );
    let yaml = format!(
        "{}routes:\n  - {{ host: a.example, pool: web }}\n",
        BASE.replace("    pool: web\n", "")
    );
    load(&yaml).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn hash_keys() {
    let yaml = with_pool("    hash_key: \"header:\"\n");
    assert_error(
        &yaml,
        "\"header:\"",
        "invalid hash_key \"header:\": header name is empty",
    );
    let yaml = with_pool("    hash_key: cookie:a b\n");
    assert_error(&yaml, "cookie:a b", "bad cookie name");
    let yaml = with_pool("    hash_key: client\n");
    assert_error(&yaml, "client", "unknown hash_key \"client\"");
}

#[test]
fn autoscale_rules() {
    let auto = |body: &str| {
        with_pool(&format!(
            "    autoscale:\n      command: [app]\n      target: {{ cpu_percent: 70 }}\n{body}"
        ))
    };
    let yaml = auto("      ports: 3100-abc\n");
    assert_error(&yaml, "3100-abc", "invalid ports \"3100-abc\"");
    let yaml = auto("      ports: 3199-3100\n");
    assert_error(&yaml, "3199-3100", "invalid ports");
    let yaml = auto("      ports: 3100-3199\n      min: 5\n      max: 3\n");
    assert_error_after(&yaml, "min: ", "autoscale min 5 is greater than max 3");
    let yaml = auto("      ports: 3100-3103\n      max: 5\n");
    assert_error_after(
        &yaml,
        "max: ",
        "autoscale max 5 exceeds the 4 ports in 3100-3103",
    );
    let yaml = auto("      ports: 3100-3103\n");
    assert_error(&yaml, "3100-3103", "autoscale max 8 exceeds the 4 ports");
    let yaml = auto("      ports: 3100-3199\n      provider: docker\n");
    assert_error(
        &yaml,
        "docker",
        "unknown autoscale provider \"docker\" (known: process, command)",
    );
    let yaml = with_pool("    autoscale: { ports: 3100-3199 }\n");
    assert_error(&yaml, "{ ports", "autoscale needs a command");
    let yaml = auto("      ports: 8000-8100\n");
    assert_error(&yaml, "8000-8100", "include port 8080 of listener \"web\"");
    let yaml = format!(
        "{}  other:\n    autoscale: {{ command: [app], ports: 3150-3160, max: 2, target: {{ memory_mb: 9 }} }}\n",
        auto("      ports: 3100-3199\n")
    );
    assert_error(
        &yaml,
        "3150-3160",
        "overlap ports 3100-3199 of pool \"web\"",
    );
}

#[test]
fn zero_counts() {
    let yaml = format!("threads: 0\n{BASE}");
    assert_error_after(&yaml, "threads: ", "threads must be at least 1");
    let yaml = with_pool("    health_check: { rise: 0, fall: 0 }\n");
    assert_error_after(&yaml, "rise: ", "health_check rise must be at least 1");
    assert_error_after(&yaml, "fall: ", "health_check fall must be at least 1");
}

#[test]
fn trusted_proxies_and_state() {
    let yaml = BASE.replace(
        "    pool: web\n",
        "    pool: web\n    trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n",
    );
    assert_error(
        &yaml,
        "10.0.0.0/33",
        "invalid CIDR \"10.0.0.0/33\" in trusted_proxies",
    );
    let yaml = format!("{BASE}state:\n  backend: redis\n");
    assert_error(&yaml, "redis", "state backend redis needs redis.url");
    let yaml = format!("{BASE}state:\n  backend: redis\n  redis: {{ url: \"http://x\" }}\n");
    assert_error(&yaml, "\"http://x\"", "invalid redis url");
}

#[test]
fn three_errors_in_file_order() {
    let yaml = "\
listeners:
  - name: web
    listen: 127.0.0.1:8080
    idle_timeout: soon
routes:
  - { path_prefix: /, pool: nope }
pools:
  web:
    backends:
      - { address: 127.0.0.1:3001, weight: 0 }
";
    let errs = errors(yaml);
    let got: Vec<(u64, u64)> = errs.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(
        got,
        vec![
            pos_of_nth(yaml, "soon", 0),
            pos_of_nth(yaml, "nope", 0),
            pos_of_nth(yaml, "0 }", 0)
        ],
        "{}",
        super::ConfigErrors(errs.clone())
    );
    assert_eq!(
        errs[1].to_string(),
        format!("{FILE}:6:29: unknown pool \"nope\" (known: web)")
    );
}

#[test]
fn errors_in_several_items_are_all_reported() {
    let yaml = "\
listeners:
  - { name: a, listen: nowhere, pool: web }
  - { name: b, listen: 127.0.0.1:8081, pool: web, colour: red }
pools:
  web:
    retries: x
    backends:
      - { address: 127.0.0.1:3001, weight: 0 }
      - { address: 127.0.0.1:3002, weight: 999 }
  api: { backends: [{ address: 127.0.0.1 }] }
";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 6, "{}", super::ConfigErrors(errs.clone()));
}

#[test]
fn yaml_syntax_error_is_one_error_with_a_location() {
    let yaml = "listeners:\n  - { name: web, listen: [127.0.0.1:8080\npools: {}\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "{}", super::ConfigErrors(errs.clone()));
    assert!(errs[0].line >= 1 && errs[0].column >= 1);
    assert!(errs[0].message.starts_with("invalid yaml:"), "{}", errs[0]);
    let errs = errors("a: 1\na: 2\n");
    assert_eq!((errs.len(), errs[0].line, errs[0].column), (1, 2, 1));
    let errs = errors("listeners:\n\t- x\n");
    assert_eq!(errs.len(), 1);
}

#[test]
fn empty_file_says_no_listeners() {
    for yaml in ["", "# nothing\n", "listeners: []\n"] {
        let errs = errors(yaml);
        assert_eq!(errs.len(), 1, "{}", super::ConfigErrors(errs.clone()));
        assert!(errs[0].message.contains("no listeners"), "{}", errs[0]);
        assert_eq!(errs[0].line, 1);
    }
    assert_error(
        "- a\n- b\n",
        "- a",
        "expected a mapping of settings, got a list",
    );
}

#[test]
fn yaml_features_keep_working() {
    let yaml = "\
defaults: &d
  retries: 1
listeners:
  - { name: web, listen: 127.0.0.1:8080, pool: web }
pools:
  web:
    <<: *d
    backends: [{ address: 127.0.0.1:3001 }]
";
    // `defaults` is not a known key: anchors must live inside known keys.
    assert_error(yaml, "defaults", "unknown field \"defaults\"");
    let yaml = "\
listeners:
  - { name: 1, listen: 127.0.0.1:8080, pool: 2 }
pools:
  2:
    backends: [{ address: 127.0.0.1:3001, disabled: false }]
";
    let c = load(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].name, "1");
    assert_eq!(c.pools[0].name, "2");
}

#[test]
fn display_formats() {
    let e = ConfigError {
        file: "a.yaml".into(),
        line: 3,
        column: 7,
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "a.yaml:3:7: bad");
    let all = ConfigErrors(vec![e.clone(), e]);
    assert_eq!(all.to_string(), "a.yaml:3:7: bad\na.yaml:3:7: bad");
    let _: &dyn std::error::Error = &all;
}

#[test]
fn grpc_health_checks() {
    let ok = with_pool("    protocol: h2\n    health_check: { type: grpc, service: pkg.Svc }\n");
    let c = load(&ok).unwrap_or_else(|e| panic!("{e}"));
    let hc = c.pools[0].health_check.as_ref().expect("check");
    assert_eq!(hc.kind, super::HealthCheckKind::Grpc);
    assert_eq!(hc.service, "pkg.Svc");
    let yaml = with_pool("    health_check: { type: grpc }\n");
    assert_error_after(
        &yaml,
        "health_check: ",
        "pool \"web\": health_check type grpc needs protocol: h2",
    );
    let yaml = with_pool("    health_check: { type: http, service: x }\n");
    assert_error_after(
        &yaml,
        "service: ",
        "health_check service applies to type: grpc only",
    );
    let yaml = with_pool("    protocol: h2\n    health_check: { type: grpc, path: /x }\n");
    assert_error_after(
        &yaml,
        "path: ",
        "health_check path does not apply to type: grpc",
    );
}

#[test]
fn grpc_statuses_in_retry_on() {
    let yaml = with_pool("    retry_on: [unavailable, 503, resource_exhausted, unavailable]\n");
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].retry_on.grpc, vec![14, 8]);
    assert_eq!(c.pools[0].retry_on.statuses, vec![503]);
    let yaml = with_pool("    retry_on: [unavailible]\n");
    assert_error(
        &yaml,
        "unavailible",
        "unknown retry_on item \"unavailible\", expected one of: connect_failure, reset, \
         timeout, cancelled, deadline_exceeded, resource_exhausted, internal, unavailable, \
         or a status 500-599",
    );
}

#[test]
fn grpc_web_settings() {
    let yaml = with_pool(
        "    protocol: h2\n    grpc_web: true\n    grpc_web_origins: [\"https://App.test/\", \"*\"]\n",
    );
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let web = c.pools[0].grpc_web.as_ref().expect("grpc_web");
    assert_eq!(web.origins, ["https://app.test", "*"]);
    let yaml = with_pool("    grpc_web: true\n");
    assert_error_after(&yaml, "grpc_web: ", "grpc_web needs protocol: h2");
    let yaml = with_pool("    protocol: h2\n    grpc_web_origins: [\"https://a.test\"]\n");
    assert_error_after(
        &yaml,
        "grpc_web_origins: ",
        "grpc_web_origins needs grpc_web: true",
    );
    let yaml =
        with_pool("    protocol: h2\n    grpc_web: true\n    grpc_web_origins: [app.test]\n");
    assert_error(
        &yaml,
        "app.test",
        "invalid grpc_web_origins item \"app.test\"",
    );
}
