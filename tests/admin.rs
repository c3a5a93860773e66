//! The admin API of a running autolb: health, performance, status, metrics, errors.

mod common;

use common::{echo, Autolb, Client};

#[tokio::test]
async fn admin_endpoints_report_pools_backends_and_metrics() {
    let (a, b) = (echo("a"), echo("b"));
    let rest = format!(
        "pools:
  web:
    balance: least_conn
    backends:
      - {{ address: \"{}\", weight: 2 }}
      - {{ address: \"{}\" }}
  spare:
    backends:
      - {{ address: \"{}\", disabled: true }}
",
        a.addr, b.addr, b.addr
    );
    let lb = Autolb::start(&common::config(2, "", &rest));
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..50 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(c.get("/status/500").await.status, 500);

    let admin = lb.admin;
    let h = common::get(admin, "/health").await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["status"], "degraded", "pool spare has no ready backend");
    let web = h["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == "web")
        .cloned();
    assert_eq!(web.expect("web")["ready"], 2);

    let p = common::get(admin, "/health/performance").await.json();
    assert_eq!(p["overall"]["requests"], 51);
    assert_eq!(p["overall"]["errors"], 1);
    assert!(p["overall"]["rps"].as_f64().expect("rps") > 0.0);
    assert!(p["overall"]["latency_ms"]["p99"].as_f64().expect("p99") > 0.0);
    assert_eq!(p["overall"]["active_connections"], 1);
    assert_eq!(p["pools"]["web"]["requests"], 51);

    let s = common::get(admin, "/loadbalancer/status").await.json();
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "web");
    assert_eq!(pool["algorithm"], "least_conn");
    let backends = pool["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    let total: u64 = backends
        .iter()
        .map(|b| b["requests_total"].as_u64().expect("n"))
        .sum();
    assert_eq!(total, 51);
    assert_eq!(backends[0]["weight"], 2);
    assert_eq!(backends[0]["health"], "up");
    assert!(backends[0]["latency_ms"]["mean"].as_f64().is_some());
    assert_eq!(s["pools"][1]["backends"][0]["health"], "disabled");

    let m = common::get(admin, "/metrics").await;
    assert!(m.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/plain"));
    let m = m.text();
    for needle in [
        &format!(
            "autolb_requests_total{{pool=\"web\",backend=\"{}\",code=\"5xx\"}}",
            a.addr
        ),
        "autolb_request_duration_seconds_bucket{pool=\"web\",le=\"+Inf\"} 51",
        "autolb_request_duration_seconds_count{pool=\"web\"} 51",
        &format!(
            "autolb_backend_up{{pool=\"spare\",backend=\"{}\"}} 0",
            b.addr
        ),
        &format!(
            "autolb_backend_active_requests{{pool=\"web\",backend=\"{}\"}} 0",
            a.addr
        ),
        "autolb_pool_instances{pool=\"web\",state=\"ready\"} 2",
        "autolb_config_reloads_total{result=\"success\"} 0",
        "autolb_downstream_connections{listener=\"web\"} 1",
        "# TYPE autolb_scaling_events_total counter",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }

    let nf = common::get(admin, "/nope").await;
    assert_eq!(nf.status, 404);
    assert!(nf.json()["error"]
        .as_str()
        .expect("error")
        .contains("/nope"));
    let mut ac = Client::connect(admin).await;
    let post = ac
        .request(
            http::Request::post("/health")
                .header("host", "localhost")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("req"),
        )
        .await;
    assert_eq!(post.status, 405);
    assert!(post.json()["error"].is_string());
}

#[tokio::test]
async fn performance_tells_the_rate_now_the_peak_and_no_data() {
    let a = echo("a");
    let lb = Autolb::start(&common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n      - {{ address: \"{}\" }}\n",
            a.addr
        ),
    ));
    // Nothing yet: no latency and no error rate rather than zeros.
    let p = common::get(lb.admin, "/health/performance").await.json();
    let o = &p["overall"];
    assert_eq!(o["requests"], 0);
    assert!(
        o["latency_ms"]["p50"].is_null() && o["latency_ms"]["p99"].is_null(),
        "{o}"
    );
    assert!(o["latency_10s_ms"]["p95"].is_null(), "{o}");
    assert!(o["error_rate"].is_null() && o["peak_rps"].is_null(), "{o}");

    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..40 {
        assert_eq!(c.get("/").await.status, 200);
    }
    // Once the second of the burst is complete, the 1 s and 10 s rates and the peak see it.
    let p = common::wait_until(10, "the burst in the 10 s rate", || async {
        let p = common::get(lb.admin, "/health/performance").await.json();
        (p["overall"]["rps_10s"].as_f64() > Some(0.0)).then_some(p)
    })
    .await;
    let o = &p["overall"];
    assert!(
        o["peak_rps"]
            .as_u64()
            .is_some_and(|n| (1..=40).contains(&n)),
        "{o}"
    );
    assert!(o["peak_at_ms"].as_u64().is_some(), "{o}");
    assert_eq!(o["requests"], 40);
    assert!(o["latency_10s_ms"]["p50"].as_f64() > Some(0.0), "{o}");
    assert_eq!(o["error_rate"], 0.0);
    assert_eq!(p["pools"]["web"]["peak_rps"], o["peak_rps"]);
    // Idle: the 1 s rate drops to 0 at once while the minute still remembers the burst,
    // and the peak stays.
    let peak = o["peak_rps"].clone();
    let p = common::wait_until(10, "the 1 s rate at 0", || async {
        let p = common::get(lb.admin, "/health/performance").await.json();
        (p["overall"]["rps_1s"].as_f64() == Some(0.0)).then_some(p)
    })
    .await;
    let o = &p["overall"];
    assert!(
        o["rps_60s"].as_f64() > Some(0.0) && o["rps"] == o["rps_60s"],
        "{o}"
    );
    assert_eq!(o["peak_rps"], peak);
}
