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
