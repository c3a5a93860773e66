//! `/metrics` of a running autolb: the families operators ask for (process, build, the
//! autoscaler's desired/min/max and signals, retries, ejections, health checks, bytes, time
//! to first byte, request durations that tell 50 ms from 90 ms), checked by value and by
//! Prometheus's own linter (`promtool check metrics`).

mod common;

use std::path::Path;

use common::{backend_list, echo, Autolb, Client};

/// The value of the sample `series` (exact name and labels) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn free_port() -> std::net::SocketAddr {
    // Below the ephemeral range: no other bind or connection of the tests takes it.
    std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

#[tokio::test]
async fn metrics_answer_the_operators_questions_and_pass_promtool() {
    let a = echo("a");
    let dead = free_port();
    let base = 26_000 + (std::process::id() % 100) as u16 * 10;
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:
  web:
    balance: round_robin
    retries: 1
    outlier: {{ consecutive_failures: 1, ejection: 60s }}
    backends:
{web}  checked:
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 200ms }}
    backends:
{checked}  auto:
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\"]
      ports: {lo}-{hi}
      min: 1
      max: 3
      interval: 200ms
      target: {{ inflight_per_instance: 10 }}
",
            web = backend_list(&[a.addr, dead], ""),
            checked = backend_list(&[a.addr], ""),
            echo = common::ECHO,
            lo = base,
            hi = base + 9,
        ),
    );
    let lb = Autolb::start(&yaml);
    let mut c = Client::connect(lb.addr("web")).await;
    // Round robin sends one of the first two requests to the dead backend: refused, retried
    // on a, and the dead one is ejected.
    for _ in 0..4 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(c.get("/delay/50").await.status, 200);
    assert_eq!(c.get("/delay/90").await.status, 200);
    assert_eq!(c.get("/bytes/5000").await.status, 200);
    let post = http::Request::post("/echo")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1234
        ])))
        .expect("request");
    assert_eq!(c.request(post).await.status, 200);

    let text = common::wait_until(20, "checks and the autoscaler's signals", || async {
        let t = common::get(lb.admin, "/metrics").await.text();
        let checks = format!(
            "autolb_health_checks_total{{pool=\"checked\",backend=\"{}\",result=\"success\"}}",
            a.addr
        );
        (sample(&t, &checks).is_some_and(|n| n >= 2.0)
            && t.contains(
                "autolb_autoscale_signal{pool=\"auto\",signal=\"inflight_per_instance\"}",
            ))
        .then_some(t)
    })
    .await;

    // Build and process.
    assert!(text.contains(&format!(
        "autolb_build_info{{version=\"{}\",git=\"",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(value(&text, "process_cpu_seconds_total") > 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    let (open, max) = (
        value(&text, "process_open_fds"),
        value(&text, "process_max_fds"),
    );
    assert!(open >= 5.0 && open < max, "{open} of {max}");
    let started = value(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );

    // The autoscaler.
    assert_eq!(
        value(&text, "autolb_autoscale_min_instances{pool=\"auto\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "autolb_autoscale_max_instances{pool=\"auto\"}"),
        3.0
    );
    assert_eq!(
        value(&text, "autolb_autoscale_desired_instances{pool=\"auto\"}"),
        1.0
    );

    // Retries, ejections, checks.
    assert_eq!(
        value(
            &text,
            "autolb_retries_total{pool=\"web\",reason=\"connect_failure\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "autolb_retries_total{pool=\"web\",reason=\"status\"}"
        ),
        0.0
    );
    let ejections = |b: std::net::SocketAddr| {
        value(
            &text,
            &format!("autolb_outlier_ejections_total{{pool=\"web\",backend=\"{b}\"}}"),
        )
    };
    assert_eq!((ejections(dead), ejections(a.addr)), (1.0, 0.0));
    assert_eq!(
        value(
            &text,
            &format!(
                "autolb_health_checks_total{{pool=\"checked\",backend=\"{}\",result=\"failure\"}}",
                a.addr
            )
        ),
        0.0
    );

    // Bytes: the POST's body in, /bytes/5000 and the rest out.
    assert_eq!(
        value(&text, "autolb_request_bytes_total{pool=\"web\"}"),
        1234.0
    );
    let out = value(&text, "autolb_response_bytes_total{pool=\"web\"}");
    assert!((5000.0..5600.0).contains(&out), "{out}");

    // Request durations: both delayed answers are above 50 ms, the 90 ms one above 90 ms
    // (the buckets between are 10 ms apart; the unit tests place exact values).
    let bucket = |le: &str| {
        value(
            &text,
            &format!("autolb_request_duration_seconds_bucket{{pool=\"web\",le=\"{le}\"}}"),
        )
    };
    assert!(bucket("0.05") <= 6.0, "{}", bucket("0.05"));
    assert!(bucket("0.09") <= 7.0, "{}", bucket("0.09"));
    for le in ["0.06", "0.07", "0.08"] {
        assert!(bucket(le) >= bucket("0.05") && bucket(le) <= bucket("0.09"));
    }
    assert_eq!(bucket("+Inf"), 8.0);
    // Time to first byte per backend: one sample per response from it.
    let ttfb = value(
        &text,
        &format!(
            "autolb_backend_response_seconds_count{{pool=\"web\",backend=\"{}\"}}",
            a.addr
        ),
    );
    assert_eq!(ttfb, 8.0);
    let slow = value(
        &text,
        &format!(
            "autolb_backend_response_seconds_bucket{{pool=\"web\",backend=\"{}\",le=\"0.05\"}}",
            a.addr
        ),
    );
    assert!(
        slow <= 6.0,
        "the delayed answers' first bytes came after 50 ms: {slow}"
    );

    // Prometheus's linter has nothing to say.
    let Some(promtool) = common::prom::promtool_or_skip("promtool check metrics") else {
        return;
    };
    let (ok, said) = common::prom::run(&promtool, &["check", "metrics"], Path::new("."), &text);
    assert!(ok && said.is_empty(), "promtool check metrics:\n{said}");
}
