//! Unit tests of `pools.NAME.autoscale`: defaults, env and cwd, and each rule's error at its
//! LINE:COL (the full config in `tests.rs` sets every key).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tests::{assert_error, assert_error_after, errors, load, FILE};
use super::tests_errors::with_pool;
use super::{load_str, Autoscale, DnsQuery, ProcessProvider, ProviderConfig, ScaleTarget};

/// An autoscale block with a command and ports, then `body`.
fn auto(body: &str) -> String {
    with_pool(&format!(
        "    autoscale:\n      command: [app]\n      ports: 3100-3199\n{body}"
    ))
}

/// `auto(body)` plus a target, so that the config is valid unless `body` breaks it.
fn auto_t(body: &str) -> String {
    auto(&format!("      target: {{ cpu_percent: 70 }}\n{body}"))
}

fn autoscale_of(body: &str) -> Autoscale {
    let c = load(&auto_t(body)).unwrap_or_else(|e| panic!("{e}"));
    c.pools[0].autoscale.clone().expect("autoscale")
}

#[test]
fn defaults() {
    let a = autoscale_of("");
    let secs = Duration::from_secs;
    let expected = Autoscale {
        provider: ProviderConfig::Process(ProcessProvider {
            command: vec!["app".into()],
            ports: (3100, 3199),
        }),
        env: vec![],
        cwd: None,
        min: 1,
        max: 8,
        interval: secs(5),
        target: ScaleTarget {
            cpu_percent: Some(70),
            ..ScaleTarget::default()
        },
        external: Default::default(),
        scale_up_max_step: 4,
        scale_down_stabilization: secs(300),
        scale_down_max_step: 1,
        drain_timeout: secs(30),
        stop_grace: secs(10),
        manual_hold: secs(600),
        cold_start_queue: 100,
        cold_start_timeout: secs(30),
        shared: false,
        timezone: chrono_tz::Tz::UTC,
        schedule: vec![],
        predictive: None,
    };
    assert_eq!(a, expected);
    // Empty sub-mappings keep the defaults too.
    let b = autoscale_of("      env: {}\n      scale_up: {}\n      scale_down: {}\n");
    assert_eq!(b, expected);
}

#[test]
fn min_zero_limits_and_zero_durations_that_are_allowed() {
    let body = "      min: 0\n      manual_hold: 0s\n      drain_timeout: 0s\n      \
                scale_down: { stabilization: 0s }\n";
    let a = autoscale_of(body);
    assert_eq!(a.min, 0);
    assert_eq!(a.manual_hold, Duration::ZERO);
    assert_eq!(a.drain_timeout, Duration::ZERO);
    assert_eq!(a.scale_down_stabilization, Duration::ZERO);
    let yaml = auto("      target: { cpu_percent: 1000 }\n");
    let c = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let target = c.pools[0].autoscale.as_ref().expect("autoscale").target;
    assert_eq!(target.cpu_percent, Some(1000));
    // Any single target is enough.
    for t in [
        "inflight_per_instance",
        "rps_per_instance",
        "p95_latency_ms",
        "memory_mb",
    ] {
        load(&auto(&format!("      target: {{ {t}: 1 }}\n"))).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn env_keeps_file_order_and_scalars_as_written() {
    let a = autoscale_of("      env:\n        Z_LAST: 1.10\n        a: yes\n        _B2: \"\"\n");
    let pairs: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("Z_LAST", "1.10"), ("a", "yes"), ("_B2", "")]);
}

#[test]
fn cwd_resolves_against_the_config_directory() {
    let a = autoscale_of("      cwd: apps/echo\n");
    assert_eq!(a.cwd, Some(PathBuf::from("conf/apps/echo")));
    let a = autoscale_of("      cwd: /srv/echo\n");
    assert_eq!(a.cwd, Some(PathBuf::from("/srv/echo")));
    let c = load_str(&auto_t("      cwd: echo\n"), Path::new("autolb.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cwd = c.pools[0].autoscale.as_ref().and_then(|a| a.cwd.clone());
    assert_eq!(cwd, Some(PathBuf::from("echo")));
}

#[test]
fn env_rules() {
    let yaml = auto_t("      env: { PORT: \"80\" }\n");
    assert_error(
        &yaml,
        "PORT",
        "env PORT is reserved: autolb sets it to each instance's port",
    );
    for bad in ["1X", "A-B", "A B", "É"] {
        let yaml = auto_t(&format!("      env: {{ OK: 1, \"{bad}\": x }}\n"));
        assert_error(
            &yaml,
            &format!("\"{bad}\""),
            &format!("invalid environment variable name \"{bad}\""),
        );
    }
    let yaml = auto_t("      env: { A: \"x\\0y\" }\n");
    assert_error(&yaml, "\"x\\0y\"", "env A must not contain a NUL character");
    let yaml = auto_t("      env: { A: [x] }\n");
    assert_error(&yaml, "[x]", "expected a string, got a list");
    let yaml = auto_t("      env: [A=1]\n");
    assert_error(
        &yaml,
        "[A=1]",
        "expected an env mapping (NAME: value), got a list",
    );
    // Every bad entry is reported.
    let yaml = auto_t("      env:\n        PORT: 1\n        9: x\n");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 2, "{}", super::ConfigErrors(errs.clone()));
}

#[test]
fn cwd_and_durations_must_not_be_empty_or_zero() {
    let yaml = auto_t("      cwd: \"\"\n");
    assert_error(&yaml, "\"\"", "autoscale cwd must not be empty");
    for key in ["interval", "stop_grace", "cold_start_timeout"] {
        let yaml = auto_t(&format!("      {key}: 0s\n"));
        assert_error_after(
            &yaml,
            &format!("{key}: "),
            &format!("autoscale {key} must be greater than 0"),
        );
    }
    let yaml = auto_t("      manual_hold: 10 minutes please\n");
    assert_error(&yaml, "10 minutes", "invalid duration");
}

#[test]
fn counts_must_be_at_least_one() {
    let yaml = auto_t("      cold_start_queue: 0\n");
    assert_error_after(
        &yaml,
        "cold_start_queue: ",
        "autoscale cold_start_queue must be at least 1",
    );
    let yaml = auto_t("      scale_up: { max_step: 0 }\n");
    assert_error_after(
        &yaml,
        "max_step: ",
        "autoscale scale_up.max_step must be at least 1",
    );
    let yaml = auto_t("      scale_down: { stabilization: 60s, max_step: 0 }\n");
    assert_error_after(
        &yaml,
        "max_step: ",
        "autoscale scale_down.max_step must be at least 1",
    );
    let yaml = auto_t("      cold_start_queue: -1\n");
    assert_error(&yaml, "-1", "expected a non-negative integer, got -1");
}

#[test]
fn targets() {
    let yaml = auto("");
    assert_error(&yaml, "command", "autoscale needs at least one target");
    let yaml = auto("      target: {}\n");
    assert_error(&yaml, "{}", "autoscale needs at least one target");
    let yaml = auto("      target: { cpu_percent: 1001 }\n");
    assert_error(
        &yaml,
        "1001",
        "target.cpu_percent must be between 1 and 1000, got 1001",
    );
    let all = [
        "inflight_per_instance",
        "rps_per_instance",
        "p95_latency_ms",
        "cpu_percent",
        "memory_mb",
    ];
    for t in all {
        let yaml = auto(&format!("      target: {{ {t}: 0 }}\n"));
        assert_error_after(
            &yaml,
            &format!("{t}: "),
            &format!("target.{t} must be greater than 0"),
        );
    }
    let yaml = auto("      target: { memory: 512 }\n");
    assert_error(
        &yaml,
        "memory:",
        "unknown field \"memory\", expected one of: ",
    );
}

#[test]
fn sub_mappings_reject_unknown_keys() {
    let yaml = auto_t("      scale_up: { stabilization: 60s }\n");
    assert_error(
        &yaml,
        "stabilization",
        "unknown field \"stabilization\", expected one of: max_step",
    );
    let yaml = auto_t("      scale_down: { max_steps: 2 }\n");
    assert_error(
        &yaml,
        "max_steps",
        "unknown field \"max_steps\", expected one of: stabilization, max_step",
    );
    let yaml = auto_t("      environment: { A: b }\n");
    assert_error(&yaml, "environment", "unknown field \"environment\"");
    // Spelled out: the 0 of scale_down (line 14; column 31), in the config file.
    let yaml = auto_t("      scale_up: { max_step: 2 }\n      scale_down: { max_step: 0 }\n");
    let e = &errors(&yaml)[..];
    assert_eq!(e.len(), 1, "{}", super::ConfigErrors(e.to_vec()));
    assert_eq!((e[0].file.as_str(), e[0].line, e[0].column), (FILE, 14, 31));
    assert_eq!(
        e[0].message,
        "autoscale scale_down.max_step must be at least 1"
    );
}

#[test]
fn shared_is_a_boolean() {
    assert!(!autoscale_of("").shared);
    assert!(autoscale_of("      shared: true\n").shared);
    let yaml = auto_t("      shared: sometimes\n");
    assert_error(
        &yaml,
        "sometimes",
        "expected a boolean, got string \"sometimes\"",
    );
}

/// A `provider: command` block, then `body`.
fn cmd(body: &str) -> String {
    with_pool(&format!(
        "    autoscale:\n      provider: command\n      target: {{ cpu_percent: 70 }}\n{body}"
    ))
}

#[test]
fn command_provider_keys_and_their_errors() {
    let ok = cmd("      scale: [./s, \"{pool}\", \"{count}\"]\n      list: [./l]\n");
    let a = load(&ok).unwrap_or_else(|e| panic!("{e}")).pools[0]
        .autoscale
        .clone()
        .expect("autoscale");
    let keys = a.provider.command().expect("provider command");
    assert_eq!(
        (
            a.provider.kind().name(),
            keys.list.len(),
            a.provider.ports()
        ),
        ("command", 1, None)
    );
    let dns =
        cmd("      scale: [./s]\n      discovery: { dns: \"api.internal:8080\", interval: 2s }\n");
    let d = load(&dns).unwrap_or_else(|e| panic!("{e}")).pools[0]
        .autoscale
        .clone()
        .and_then(|a| a.provider.command().and_then(|c| c.discovery.clone()))
        .expect("discovery");
    assert_eq!(
        (d.query, d.resolver, d.interval),
        (
            DnsQuery::A {
                name: "api.internal".into(),
                port: 8080
            },
            None,
            Duration::from_secs(2)
        )
    );
    let srv = cmd("      scale: [./s]\n      discovery: { dns_srv: _http._tcp.api.prod.svc.cluster.local, resolver: \"127.0.0.1:5353\" }\n");
    let d = load(&srv).unwrap_or_else(|e| panic!("{e}")).pools[0]
        .autoscale
        .clone()
        .and_then(|a| a.provider.command().and_then(|c| c.discovery.clone()))
        .expect("discovery");
    assert_eq!(
        (d.query, d.resolver, d.interval),
        (
            DnsQuery::Srv {
                name: "_http._tcp.api.prod.svc.cluster.local".into()
            },
            Some("127.0.0.1:5353".parse().expect("addr")),
            Duration::from_secs(5)
        )
    );
    let ip_only =
        cmd("      scale: [./s]\n      discovery: { dns_srv: a.b, resolver: 10.96.0.10 }\n");
    let d = load(&ip_only).unwrap_or_else(|e| panic!("{e}")).pools[0]
        .autoscale
        .clone()
        .and_then(|a| a.provider.command().and_then(|c| c.discovery.clone()))
        .expect("discovery");
    assert_eq!(d.resolver, Some("10.96.0.10:53".parse().expect("addr")));
    let yaml = cmd("      scale: [./s]\n      discovery: { dns: \"api.internal\" }\n");
    assert_error(&yaml, "\"api.internal\"", "must be NAME:PORT");
    let yaml = cmd("      scale: [./s]\n      discovery: { dns_srv: \"a b\" }\n");
    assert_error(&yaml, "\"a b\"", "must be a DNS name");
    let yaml = cmd("      scale: [./s]\n      discovery: { dns_srv: a.b, resolver: nameserver }\n");
    assert_error(&yaml, "nameserver", "must be IP or IP:PORT");
    let yaml = cmd("      scale: [./s]\n      discovery: { dns: \"a:1\", dns_srv: a.b }\n");
    assert_error(&yaml, "a.b", "dns or dns_srv, not both");
    let yaml = cmd("      scale: [./s]\n      discovery: { interval: 1s }\n");
    assert_error(&yaml, "{ interval", "needs dns");
    let yaml = cmd("      scale: [./s]\n      list: [./l]\n      ports: 3100-3199\n");
    assert_error(
        &yaml,
        "3100-3199",
        "autoscale ports are for provider process",
    );
    let yaml = cmd("      scale: [./s]\n      list: [./l]\n      discovery: { dns: \"a:1\" }\n");
    assert_error(&yaml, "{ dns", "either list or discovery");
    let yaml = auto_t("      list: [./l]\n");
    assert_error(&yaml, "[./l]", "autoscale list needs provider: command");
    let yaml = cmd("      list: [./l]\n");
    assert!(errors(&yaml)
        .iter()
        .any(|e| e.message.contains("needs scale")));
}

#[test]
fn schedule_timezone_and_predictive() {
    let a = autoscale_of(
        "      timezone: America/New_York\n      schedule:\n        \
         - { cron: \"0 8 * * 1-5\", min: 4, max: 12 }\n        \
         - { cron: \"30 17 * * FRI\", duration: 2h, max: 2 }\n      \
         predictive: { lookahead: 90s, min_history: 2d }\n",
    );
    assert_eq!(a.timezone, chrono_tz::America::New_York);
    assert_eq!(a.schedule.len(), 2);
    assert_eq!(a.schedule[0].pattern, "0 8 * * 1-5");
    assert_eq!((a.schedule[0].min, a.schedule[0].max), (Some(4), Some(12)));
    assert_eq!(a.schedule[0].duration, None);
    assert_eq!((a.schedule[1].min, a.schedule[1].max), (None, Some(2)));
    assert_eq!(a.schedule[1].duration, Some(Duration::from_secs(7200)));
    let p = a.predictive.expect("predictive");
    assert_eq!(p.lookahead, Duration::from_secs(90));
    assert_eq!(p.min_history, Duration::from_secs(2 * 86_400));
    // Defaults, and `enabled: false`.
    let p = autoscale_of("      predictive: {}\n")
        .predictive
        .expect("on");
    assert_eq!(
        (p.lookahead, p.min_history),
        (Duration::from_secs(120), Duration::from_secs(86_400))
    );
    assert_eq!(
        autoscale_of("      predictive: { enabled: false }\n").predictive,
        None
    );
}

#[test]
fn schedule_errors_are_at_their_key() {
    let yaml = auto_t("      timezone: Mars/Olympus\n");
    assert_error(&yaml, "Mars/Olympus", "unknown time zone \"Mars/Olympus\"");
    let yaml = auto_t("      schedule: [{ cron: \"0 25 * * *\", min: 2 }]\n");
    assert_error(&yaml, "\"0 25", "invalid cron pattern \"0 25 * * *\"");
    let yaml = auto_t("      schedule: [{ cron: \"0 8 * * *\" }]\n");
    assert_error(&yaml, "{ cron", "a schedule entry needs min, max or both");
    let yaml = auto_t("      schedule: [{ min: 2 }]\n");
    assert_error(&yaml, "{ min", "a schedule entry needs cron");
    let yaml = auto_t("      schedule: [{ cron: \"0 8 * * *\", min: 5, max: 3 }]\n");
    assert_error(&yaml, "5, max", "schedule min 5 is greater than its max 3");
    let yaml = auto_t("      schedule: [{ cron: \"0 8 * * *\", max: 101 }]\n");
    assert_error(
        &yaml,
        "101",
        "schedule asks for 101 instances, the ports allow 100",
    );
    let yaml = auto_t("      schedule: [{ cron: \"0 8 * * *\", max: 2, duration: 0s }]\n");
    assert_error(&yaml, "0s", "a schedule's duration must be greater than 0");
    let yaml = auto_t("      schedule: [{ cron: \"0 8 * * *\", max: 2, every: 1h }]\n");
    assert_error(
        &yaml,
        "every",
        "unknown field \"every\", expected one of: cron, min, max, duration",
    );
    let yaml = auto_t("      predictive: { lookahead: 0s }\n");
    assert_error(&yaml, "0s", "predictive.lookahead must be greater than 0");
    let yaml = auto_t("      predictive: { enable: true }\n");
    assert_error(&yaml, "enable", "unknown field \"enable\"");
}
