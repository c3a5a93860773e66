//! Unit tests of the config pipeline: a full valid config, defaults, and every error kind
//! with its FILE:LINE:COL (see also `tests_errors.rs`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

pub(super) const FILE: &str = "conf/autolb.yaml";

pub(super) fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    load_str(yaml, Path::new(FILE))
}

/// 1-based line/column of the `n`th (0-based) occurrence of `needle`.
pub(super) fn pos_of_nth(yaml: &str, needle: &str, n: usize) -> (u64, u64) {
    let (offset, _) = yaml
        .match_indices(needle)
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} not in test yaml"));
    let before = &yaml[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, col)
}

/// All errors of an invalid config.
pub(super) fn errors(yaml: &str) -> Vec<ConfigError> {
    match load(yaml) {
        Ok(c) => panic!("config unexpectedly valid: {c:#?}"),
        Err(e) => e.0,
    }
}

/// Asserts an error containing `message` at the `n`th occurrence of `needle`.
pub(super) fn assert_error_nth(yaml: &str, needle: &str, n: usize, message: &str) {
    let (line, column) = pos_of_nth(yaml, needle, n);
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.line == line && e.column == column && e.message.contains(message)),
        "expected {line}:{column}: ...{message}... got:\n{}",
        ConfigErrors(errs.clone())
    );
    assert!(errs.iter().all(|e| e.file == FILE));
}

pub(super) fn assert_error(yaml: &str, needle: &str, message: &str) {
    assert_error_nth(yaml, needle, 0, message)
}

/// Asserts an error containing `message` right after the first `prefix`.
pub(super) fn assert_error_after(yaml: &str, prefix: &str, message: &str) {
    let (offset, _) = yaml
        .match_indices(prefix)
        .next()
        .unwrap_or_else(|| panic!("{prefix:?} not in test yaml"));
    let rest = &yaml[offset + prefix.len()..];
    let needle: String = rest.chars().take_while(|c| *c != '\n').collect();
    let n = yaml[..offset + prefix.len()]
        .matches(needle.as_str())
        .count();
    assert_error_nth(yaml, &needle, n, message)
}

const FULL: &str = r#"threads: 4
shutdown_grace: 45s
admin:
  listen: 127.0.0.1:9100
  token_env: AUTOLB_ADMIN_TOKEN
  read_token_env: AUTOLB_READ_TOKEN
listeners:
  - name: web
    listen: 0.0.0.0:8080
    protocol: http
    pool: web
    trusted_proxies: [10.0.0.0/8, 192.168.1.7, "fd00::/8"]
    idle_timeout: 90s
    h2c: true
  - name: secure
    listen: 0.0.0.0:8443
    protocol: https
    tls:
      certificates:
        - { cert: certs/example.crt, key: certs/example.key }
        - { cert: /abs/other.crt, key: /abs/other.key }
      alpn: [http/1.1]
      strict_sni: true
    hsts: { max_age: 730d, include_subdomains: true }
  - name: db
    listen: 127.0.0.1:5432
    protocol: tcp
    pool: api
routes:
  - { host: API.example.com, path_prefix: /v1, pool: api }
  - { path_prefix: /static, pool: web }
pools:
  web:
    balance: least_conn
    hash_key: source_ip
    sticky:
      cookie: { name: SID, ttl: 2h, path: /app, same_site: Strict, secure: true }
      source_ip: true
      header: X-Session
    health_check:
      type: http
      path: /healthz
      host: app.example.com:8080
      expected_status: [200, "300-302", 204]
      port: 9090
      interval: 3s
      timeout: 500ms
      rise: 1
      fall: 4
    outlier:
      consecutive_failures: 7
      ejection: 1m
      max_ejection: 10m
      max_ejection_percent: 20
      count: [reset, 5xx]
    retries: 3
    retry_methods: [get, HEAD, Post]
    retry_on: [connect_failure, timeout, 502, "503"]
    slow_start: 30s
    panic_threshold: 40
    timeouts: { connect: 1s, response: 10s, idle: 2m, websocket_idle: 90m, request_total: 45s }
    backends:
      - { address: 127.0.0.1:3001, weight: 3 }
      - { address: 127.0.0.1:3002 }
      - { address: "localhost:3003", weight: 256, disabled: true }
    autoscale:
      provider: process
      command: [autolb-echo, --port, "{port}"]
      env: { RUST_LOG: debug, WORKERS: 4, _X1: "" }
      cwd: apps/echo
      ports: 3100-3199
      min: 0
      max: 10
      interval: 2s
      target: { inflight_per_instance: 50, rps_per_instance: 300, p95_latency_ms: 200,
                cpu_percent: 70, memory_mb: 512 }
      scale_up: { max_step: 2 }
      scale_down: { stabilization: 120s, max_step: 3 }
      drain_timeout: 15s
      stop_grace: 5s
      manual_hold: 15m
      cold_start_queue: 50
      cold_start_timeout: 20s
  api:
    balance: consistent_hash
    hash_key: header:X-User
    health_check: { type: tcp }
    outlier: { ejection: 400s }
    protocol: h2
    tls: { sni: API.internal, ca: certs/ca.pem, client_cert: /abs/c.crt, client_key: c.key }
    backends:
      - address: 127.0.0.1:4001
state:
  backend: redis
  redis: { url: "redis://127.0.0.1:6379" }
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn full_config_parses_into_the_model() {
    let c = load(FULL).unwrap_or_else(|e| panic!("{e}"));
    let localhost = ("localhost", 3003)
        .to_socket_addrs()
        .expect("localhost resolves")
        .min_by_key(|a| !a.is_ipv4())
        .expect("an address");
    let expected = Config {
        source: PathBuf::from(FILE),
        hash: super::text_hash(FULL),
        threads: 4,
        shutdown_grace: Duration::from_secs(45),
        admin: Admin {
            listen: addr("127.0.0.1:9100"),
            token_env: Some("AUTOLB_ADMIN_TOKEN".into()),
            ready_requires_backend: true,
            read_token_env: Some("AUTOLB_READ_TOKEN".into()),
        },
        listeners: vec![
            Listener {
                name: "web".into(),
                listen: addr("0.0.0.0:8080"),
                protocol: Protocol::Http,
                pool: Some("web".into()),
                trusted_proxies: vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "192.168.1.7/32".parse().expect("net"),
                    "fd00::/8".parse().expect("net"),
                ],
                idle_timeout: Duration::from_secs(90),
                tls: None,
                h2c: true,
                redirect_https: None,
                accept_proxy: false,
                sni_routes: vec![],
                hsts: None,
                limits: Default::default(),
                rate_limit: None,
                normalize: Default::default(),
                reuse_port: false,
                http3: None,
            },
            Listener {
                name: "secure".into(),
                listen: addr("0.0.0.0:8443"),
                protocol: Protocol::Https,
                pool: None,
                trusted_proxies: vec![],
                idle_timeout: Duration::from_secs(60),
                tls: Some(ListenerTls {
                    certificates: vec![
                        CertPair {
                            cert: "conf/certs/example.crt".into(),
                            key: "conf/certs/example.key".into(),
                        },
                        CertPair {
                            cert: "/abs/other.crt".into(),
                            key: "/abs/other.key".into(),
                        },
                    ],
                    alpn: vec!["http/1.1".into()],
                    strict_sni: true,
                    acme: None,
                    client_auth: None,
                    ocsp: None,
                    session_tickets: Default::default(),
                }),
                h2c: false,
                redirect_https: None,
                accept_proxy: false,
                sni_routes: vec![],
                hsts: Some(Hsts {
                    max_age: Duration::from_secs(730 * 86400),
                    include_subdomains: true,
                    preload: false,
                }),
                limits: Default::default(),
                rate_limit: None,
                normalize: Default::default(),
                reuse_port: false,
                http3: None,
            },
            Listener {
                name: "db".into(),
                listen: addr("127.0.0.1:5432"),
                protocol: Protocol::Tcp,
                pool: Some("api".into()),
                trusted_proxies: vec![],
                idle_timeout: Duration::from_secs(60),
                tls: None,
                h2c: false,
                redirect_https: None,
                accept_proxy: false,
                sni_routes: vec![],
                hsts: None,
                limits: Default::default(),
                rate_limit: None,
                normalize: Default::default(),
                reuse_port: false,
                http3: None,
            },
        ],
        routes: vec![
            Route {
                host: Some("api.example.com".into()),
                path_prefix: Some("/v1".into()),
                pool: "api".into(),
                compress: None,
                cache: None,
                rate_limit: None,
                grpc_web: None,
                client_cert_required: false,
            },
            Route {
                host: None,
                path_prefix: Some("/static".into()),
                pool: "web".into(),
                compress: None,
                cache: None,
                rate_limit: None,
                grpc_web: None,
                client_cert_required: false,
            },
        ],
        pools: vec![
            Pool {
                name: "web".into(),
                balance: Algorithm::LeastConn,
                hash_key: HashKey::SourceIp,
                sticky: Some(Sticky {
                    cookie: Some(StickyCookie {
                        name: "SID".into(),
                        ttl: Duration::from_secs(7200),
                        path: "/app".into(),
                        same_site: SameSite::Strict,
                        secure: Some(true),
                    }),
                    source_ip: true,
                    header: Some("x-session".into()),
                    learn_cookie: None,
                }),
                health_check: Some(HealthCheck {
                    kind: HealthCheckKind::Http,
                    path: "/healthz".into(),
                    service: String::new(),
                    host: Some("app.example.com:8080".into()),
                    expected_status: vec![(200, 200), (300, 302), (204, 204)],
                    port: Some(9090),
                    interval: Duration::from_secs(3),
                    timeout: Duration::from_millis(500),
                    rise: 1,
                    fall: 4,
                }),
                outlier: Some(Outlier {
                    consecutive_failures: 7,
                    ejection: Duration::from_secs(60),
                    max_ejection: Duration::from_secs(600),
                    max_ejection_percent: 20,
                    count: OutlierCount {
                        connect_failure: false,
                        reset: true,
                        timeout: false,
                        status_5xx: true,
                    },
                }),
                retries: 3,
                retry_methods: vec![http::Method::GET, http::Method::HEAD, http::Method::POST],
                retry_on: RetryOn {
                    connect_failure: true,
                    reset: false,
                    timeout: true,
                    statuses: vec![502, 503],
                    grpc: Vec::new(),
                },
                timeouts: Timeouts {
                    connect: Duration::from_secs(1),
                    response: Duration::from_secs(10),
                    idle: Duration::from_secs(120),
                    websocket_idle: Duration::from_secs(5400),
                    request_total: Duration::from_secs(45),
                },
                slow_start: Some(Duration::from_secs(30)),
                panic_threshold: 40,
                backends: vec![
                    Backend {
                        address: "127.0.0.1:3001".into(),
                        addr: addr("127.0.0.1:3001"),
                        weight: 3,
                        disabled: false,
                        max_connections: None,
                    },
                    Backend {
                        address: "127.0.0.1:3002".into(),
                        addr: addr("127.0.0.1:3002"),
                        weight: 1,
                        disabled: false,
                        max_connections: None,
                    },
                    Backend {
                        address: "localhost:3003".into(),
                        addr: localhost,
                        weight: 256,
                        disabled: true,
                        max_connections: None,
                    },
                ],
                autoscale: Some(Autoscale {
                    provider: ProviderConfig::Process(ProcessProvider {
                        command: vec!["autolb-echo".into(), "--port".into(), "{port}".into()],
                        ports: (3100, 3199),
                    }),
                    env: [("RUST_LOG", "debug"), ("WORKERS", "4"), ("_X1", "")]
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .to_vec(),
                    cwd: Some(PathBuf::from("conf/apps/echo")),
                    min: 0,
                    max: 10,
                    interval: Duration::from_secs(2),
                    target: ScaleTarget {
                        inflight_per_instance: Some(50),
                        rps_per_instance: Some(300),
                        p95_latency_ms: Some(200),
                        cpu_percent: Some(70),
                        memory_mb: Some(512),
                        ..ScaleTarget::default()
                    },
                    external: Default::default(),
                    scale_up_max_step: 2,
                    scale_down_stabilization: Duration::from_secs(120),
                    scale_down_max_step: 3,
                    drain_timeout: Duration::from_secs(15),
                    stop_grace: Duration::from_secs(5),
                    manual_hold: Duration::from_secs(900),
                    cold_start_queue: 50,
                    cold_start_timeout: Duration::from_secs(20),
                    shared: false,
                    timezone: chrono_tz::Tz::UTC,
                    schedule: vec![],
                    predictive: None,
                }),
                protocol: UpstreamProtocol::H1,
                send_proxy: None,
                tls: None,
                rate_limit: None,
                compress: None,
                cache: None,
                limits: None,
                grpc_web: None,
            },
            Pool {
                name: "api".into(),
                balance: Algorithm::ConsistentHash,
                hash_key: HashKey::Header("x-user".into()),
                sticky: None,
                health_check: Some(HealthCheck {
                    kind: HealthCheckKind::Tcp,
                    path: "/health".into(),
                    service: String::new(),
                    host: None,
                    expected_status: vec![(200, 399)],
                    port: None,
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                }),
                outlier: Some(Outlier {
                    consecutive_failures: 5,
                    ejection: Duration::from_secs(400),
                    max_ejection: Duration::from_secs(400),
                    max_ejection_percent: 50,
                    count: OutlierCount::default(),
                }),
                retries: 2,
                retry_methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
                    .map(|m| m.parse().expect("method"))
                    .to_vec(),
                retry_on: RetryOn::default(),
                timeouts: Timeouts {
                    connect: Duration::from_secs(2),
                    response: Duration::from_secs(30),
                    idle: Duration::from_secs(60),
                    websocket_idle: Duration::from_secs(3600),
                    request_total: Duration::from_secs(60),
                },
                slow_start: None,
                panic_threshold: 0,
                backends: vec![Backend {
                    address: "127.0.0.1:4001".into(),
                    addr: addr("127.0.0.1:4001"),
                    weight: 1,
                    disabled: false,
                    max_connections: None,
                }],
                autoscale: None,
                protocol: UpstreamProtocol::H2,
                send_proxy: None,
                tls: Some(UpstreamTls {
                    sni: Some("api.internal".into()),
                    ca: Some("conf/certs/ca.pem".into()),
                    verify: true,
                    client_cert: Some("/abs/c.crt".into()),
                    client_key: Some("conf/c.key".into()),
                }),
                rate_limit: None,
                compress: None,
                cache: None,
                limits: None,
                grpc_web: None,
            },
        ],
        state: State::Redis(Redis {
            urls: vec!["redis://127.0.0.1:6379".into()],
            sentinel: None,
            tls: None,
            password_env: None,
        }),
        access_log: None,
        alerts: None,
        warnings: vec![],
    };
    assert_eq!(c, expected);
}

#[test]
fn defaults_fill_a_minimal_config() {
    let yaml = "listeners:\n  - { name: web, listen: \"127.0.0.1:8080\", pool: web }\n\
                pools:\n  web:\n    sticky: {}\n    health_check: {}\n    outlier: {}\n    \
                backends: [{ address: 127.0.0.1:3001 }]\n  auto:\n    autoscale:\n      \
                command: [app]\n      ports: 3100-3199\n      target: { cpu_percent: 70 }\n";
    let c = load(yaml).unwrap_or_else(|e| panic!("{e}"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.threads, cores);
    assert_eq!(
        c.admin,
        Admin {
            listen: addr("127.0.0.1:9001"),
            token_env: None,
            ready_requires_backend: true,
            read_token_env: None,
        }
    );
    assert_eq!(c.state, State::Memory);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    let l = &c.listeners[0];
    assert_eq!(l.protocol, Protocol::Http);
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert!(l.trusted_proxies.is_empty());
    let web = &c.pools[0];
    assert_eq!(web.balance, Algorithm::RoundRobin);
    assert_eq!(web.hash_key, HashKey::SourceIp);
    assert_eq!(web.retries, 2);
    let methods: Vec<&str> = web.retry_methods.iter().map(|m| m.as_str()).collect();
    assert_eq!(methods, ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);
    assert_eq!(web.retry_on, RetryOn::default());
    assert!(web.retry_on.statuses.is_empty());
    assert_eq!((web.slow_start, web.panic_threshold), (None, 0));
    assert_eq!(
        web.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            websocket_idle: Duration::from_secs(3600),
            request_total: Duration::from_secs(60),
        }
    );
    assert_eq!(
        web.sticky,
        Some(Sticky {
            cookie: Some(StickyCookie {
                name: "AUTOLB_SID".into(),
                ttl: Duration::from_secs(3600),
                path: "/".into(),
                same_site: SameSite::Lax,
                secure: None,
            }),
            source_ip: false,
            header: None,
            learn_cookie: None,
        })
    );
    let hc = web.health_check.clone().expect("health check");
    assert_eq!(
        (
            hc.kind,
            hc.path.as_str(),
            hc.interval,
            hc.timeout,
            hc.rise,
            hc.fall
        ),
        (
            HealthCheckKind::Http,
            "/health",
            Duration::from_secs(2),
            Duration::from_secs(1),
            2,
            3
        )
    );
    assert_eq!(
        (hc.host, hc.expected_status, hc.port),
        (None, vec![(200, 399)], None)
    );
    assert_eq!(
        web.outlier,
        Some(Outlier {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            count: OutlierCount {
                connect_failure: true,
                reset: true,
                timeout: true,
                status_5xx: true
            },
        })
    );
    assert_eq!(
        (web.backends[0].weight, web.backends[0].disabled),
        (1, false)
    );
    // Autoscale defaults: tests_autoscale.rs.
    assert!(c.pools[1].autoscale.is_some() && c.pools[1].backends.is_empty());
}

#[test]
fn https_listener_gets_default_alpn() {
    let yaml = "listeners:\n  - name: s\n    listen: 0.0.0.0:8443\n    protocol: https\n    \
                pool: p\n    tls:\n      certificates: [{ cert: a.crt, key: a.key }]\n\
                pools:\n  p: { backends: [{ address: 127.0.0.1:1 }] }\n";
    let c = load_str(yaml, Path::new("autolb.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let tls = c.listeners[0].tls.clone().expect("tls");
    assert_eq!(tls.alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
    assert_eq!(tls.certificates[0].cert, PathBuf::from("a.crt"));
}

#[test]
fn relative_certificate_paths_resolve_against_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autolb.yaml");
    let c = load_str(FULL, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, path);
    let cert = &c.listeners[1].tls.as_ref().expect("tls").certificates[0].cert;
    assert_eq!(cert, &dir.path().join("certs/example.crt"));
}
