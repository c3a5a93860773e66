//! Admin API security through the real autolb: DNS-rebinding Host guard, no CORS, 405 on
//! other methods, forwarded headers grant nothing, admin paths unreachable through a
//! data-plane listener.

mod common;

use std::time::Duration;

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
        .header("content-type", "application/json")
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
        .header("content-type", "application/json")
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

/// A POST with these headers and body (no Content-Type unless given).
async fn raw_post(
    admin: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> common::Reply {
    let mut b = http::Request::post(path).header("host", admin.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    Client::connect(admin).await.request(req).await
}

/// Without `token_env` (a loopback admin), what a page on another site could make a browser
/// send is refused: a form or "simple" fetch (not JSON) with 415, a foreign Origin or a
/// cross-site Sec-Fetch-Site with 403; nothing changes. curl's JSON POST still works, and so
/// does a POST from the admin's own origin (the dashboard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused_without_a_token() {
    let (a, b) = (echo("a"), echo("b"));
    let lb = Autolb::start(&config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[a.addr, b.addr], "")
        ),
    ));
    let admin = lb.admin;
    let own = format!("http://{admin}");
    let data = format!("http://{}", lb.addr("web"));
    let drain = format!(r#"{{"pool":"web","backend":"{}","state":"drain"}}"#, a.addr);
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(&str, Headers, u16)> = vec![
        // What a form (text/plain, urlencoded) or a no-cors fetch sends.
        (
            "/config/reload",
            vec![
                ("content-type", "text/plain"),
                ("origin", "http://evil.example"),
            ],
            403,
        ),
        ("/config/reload", vec![("content-type", "text/plain")], 415),
        ("/config/reload", vec![], 415),
        (
            "/backends/state",
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
        ),
        (
            "/scaling/manual",
            vec![("content-type", "text/plain;charset=UTF-8")],
            415,
        ),
        // JSON, but a browser says it comes from elsewhere.
        (
            "/backends/state",
            vec![
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            403,
        ),
        (
            "/backends/state",
            vec![("content-type", "application/json"), ("origin", &data)],
            403,
        ),
        (
            "/backends/state",
            vec![("content-type", "application/json"), ("origin", "null")],
            403,
        ),
        (
            "/backends/state",
            vec![
                ("content-type", "application/json"),
                ("sec-fetch-site", "cross-site"),
            ],
            403,
        ),
        (
            "/config/reload",
            vec![
                ("content-type", "application/json"),
                ("sec-fetch-site", "same-site"),
            ],
            403,
        ),
    ];
    for (path, headers, status) in &cases {
        let body = if *path == "/backends/state" {
            drain.as_str()
        } else {
            "{}"
        };
        let r = raw_post(admin, path, headers, body).await;
        assert_eq!(r.status, *status, "{path} {headers:?}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    assert!(lb
        .proc
        .log_shows("refused a cross-site POST", Duration::from_secs(5)));

    // Nothing changed: no reload ran, both backends still take requests.
    let h = common::get(admin, "/health").await.json();
    assert!(h["config"]["last_reload"].is_null(), "{h:#}");
    let s = common::get(admin, "/loadbalancer/status").await.json();
    for backend in s["pools"][0]["backends"].as_array().expect("backends") {
        assert_eq!(backend["state"], "ready", "{backend:#}");
    }

    // curl's JSON POST, and the admin's own page, are served.
    let r = common::admin_post(admin, "/config/reload", None, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = common::admin_post(
        admin,
        "/backends/state",
        None,
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
        &drain,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "drain");
}

/// `admin.read_token_env`: every GET but the probes and the page needs the read (or the
/// POST) token; the read token opens no POST. A non-loopback admin without it warns at
/// start, naming what anyone can read; with it, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_token_guards_every_get_but_the_probes() {
    let app = echo("app");
    let pools = format!(
        "pools:\n  web:\n    backends:\n{}",
        backend_list(&[app.addr], "")
    );
    let exposed = config(1, "", &pools).replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"0.0.0.0:0\", token_env: T_ADMIN }",
    );
    let open = Autolb::start_with_env(&exposed, &[("T_ADMIN", "w-token")]);
    assert!(open
        .proc
        .log_shows("admin.read_token_env is not set", Duration::from_secs(5)));
    let warning = open
        .proc
        .log()
        .lines()
        .find(|l| l.contains("admin.read_token_env is not set"))
        .map(str::to_string)
        .unwrap_or_default();
    for path in [
        "/metrics",
        "/cluster/status",
        "/loadbalancer/status",
        "/redis/status",
    ] {
        assert!(warning.contains(path), "{path} in {warning}");
    }
    assert!(warning.contains("WARN"), "{warning}");
    let r = common::get(open.admin, "/cluster/status").await;
    assert_eq!(r.status, 200, "without read_token_env reads stay open");
    drop(open);

    let guarded = exposed.replace(
        "token_env: T_ADMIN }",
        "token_env: T_ADMIN, read_token_env: T_READ }",
    );
    let lb = Autolb::start_with_env(&guarded, &[("T_ADMIN", "w-token"), ("T_READ", "r-token")]);
    let admin = lb.admin;
    let mut c = Client::connect(admin).await;
    for path in [
        "/health/performance",
        "/loadbalancer/status",
        "/metrics",
        "/scaling/status",
        "/cluster/status",
        "/redis/status",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{path}");
        assert!(r.json()["error"].is_string());
        let r = c
            .get_with(path, &[("authorization", "Bearer r-tokeN")])
            .await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        for token in ["r-token", "w-token"] {
            let auth = format!("Bearer {token}");
            let r = c.get_with(path, &[("authorization", &auth)]).await;
            assert_eq!(r.status, 200, "{path} with {token}: {}", r.text());
        }
    }
    // What probes and a browser opening the page need stays open.
    for path in ["/health", "/"] {
        assert_eq!(c.get(path).await.status, 200, "{path}");
    }
    // The read token opens no POST.
    let r = common::admin_post(admin, "/config/reload", Some("r-token"), &[], "").await;
    assert_eq!(r.status, 401);
    let r = common::admin_post(admin, "/config/reload", Some("w-token"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!lb.proc.log().contains("admin.read_token_env is not set"));
}
