//! Admin API security through the real autolb: DNS-rebinding Host guard, no CORS, 405 on
//! other methods, forwarded headers grant nothing, admin paths unreachable through a
//! data-plane listener.

mod common;

use common::{backend_list, config, echo, Autolb, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_resists_rebinding_cors_and_forwarded_tricks() {
    let app = echo("app");
    let yaml = config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[app.addr], "")
        ),
    )
    .replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_env: T_ADMIN }",
    );
    let lb = Autolb::start_with_env(&yaml, &[("T_ADMIN", "s3cret-token")]);
    let mut admin = Client::connect(lb.admin).await;

    // DNS rebinding: a name that is not an IP literal or localhost is refused.
    let r = admin
        .get_with("/health", &[("host", "evil.example:9001")])
        .await;
    assert_eq!(r.status, 421, "{}", r.text());
    let r = admin.get_with("/health", &[("host", "localhost")]).await;
    assert_eq!(r.status, 200);

    // No CORS, even when asked.
    let r = admin
        .get_with("/health", &[("origin", "http://evil.example")])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers
    );

    // Other methods on GET endpoints: 405.
    let req = http::Request::post("/health")
        .header("host", lb.admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(admin.request(req).await.status, 405);

    // Forwarded headers grant nothing: a POST without the token is refused.
    let req = http::Request::post("/scaling/manual")
        .header("host", lb.admin.to_string())
        .header("x-forwarded-for", "127.0.0.1")
        .header("forwarded", "for=127.0.0.1")
        .header("x-real-ip", "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"pool":"web","instances":2}"#,
        )))
        .expect("request");
    assert_eq!(admin.request(req).await.status, 401);
    let req = http::Request::post("/config/reload")
        .header("host", lb.admin.to_string())
        .header("authorization", "Bearer s3cret-tokeN")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(admin.request(req).await.status, 401);

    // Admin paths through the data-plane listener reach the backend, never the admin API.
    let mut data = Client::connect(lb.addr("web")).await;
    for path in [
        "/metrics",
        "/cluster/status",
        "/scaling/status",
        "/redis/status",
    ] {
        let r = data.get(path).await;
        assert_eq!(r.headers["x-backend"], "app", "{path}");
        assert!(!r.text().contains("autolb_"), "{path}");
    }
    // Secrets stay out of every dump.
    for path in [
        "/health",
        "/cluster/status",
        "/redis/status",
        "/loadbalancer/status",
        "/scaling/status",
        "/metrics",
    ] {
        let r = admin.get(path).await;
        assert!(!r.text().contains("s3cret-token"), "{path} leaks the token");
    }
}
