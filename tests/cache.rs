//! The HTTP cache (`cache:` of a pool or a route) through the real autolb and a real backend
//! (hyper, in this process, counting the requests that reach it): freshness and Vary,
//! responses never stored (no-store, private, Set-Cookie), 304s (to clients, and the
//! cache's own revalidation), HEAD and ranges from a stored GET, coalescing of concurrent
//! misses, stale-while-revalidate, stale-if-error with the backend gone, purges through the
//! admin API, and the size bound under a flood of distinct keys (RSS measured).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{admin_post, Autolb, Client, Reply};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// A backend in this test process: answers by path, counts requests per path, and can be
/// killed (its listener and every connection closed).
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    fn seen(&self, path: &str) -> u32 {
        self.seen.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the backend answers for `path` (its `n`th request to it, from 1).
fn answer(req: &http::Request<hyper::body::Incoming>, n: u32) -> http::Response<Full<Bytes>> {
    let path = req.uri().path();
    let mut b = http::Response::builder();
    let body = format!("{path} #{n}");
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = match path.split('/').nth(1).unwrap_or("") {
        "fresh" | "slow" => {
            b = b.header("cache-control", "max-age=600");
            body
        }
        "vary" => {
            b = b
                .header("cache-control", "max-age=600")
                .header("vary", "Accept-Language");
            format!("{body} lang={}", header("accept-language"))
        }
        "nostore" => {
            b = b.header("cache-control", "no-store, max-age=600");
            body
        }
        "private" => {
            b = b.header("cache-control", "private, max-age=600");
            body
        }
        "cookie" => {
            b = b
                .header("cache-control", "max-age=600")
                .header("set-cookie", format!("session={n}"));
            body
        }
        "etag" => {
            // Always revalidated: 304 when the cache's validator matches.
            b = b
                .header("cache-control", "no-cache")
                .header("etag", "\"v1\"");
            if header("if-none-match") == "\"v1\"" {
                return b.status(304).body(Full::new(Bytes::new())).unwrap();
            }
            body
        }
        "short" => {
            // Fresh for a second, then stale (served while refreshed, or on errors).
            b = b
                .header("cache-control", "max-age=1")
                .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT");
            body
        }
        "big" => {
            b = b.header("cache-control", "max-age=600");
            "x".repeat(16 << 10)
        }
        _ => body,
    };
    b.body(Full::new(Bytes::from(body))).unwrap()
}

async fn backend(delay: Duration) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counts = seen.clone();
    let task = tokio::spawn(async move {
        // Connections live in this task: aborting it closes them all.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let counts = counts.clone();
                    async move {
                        let n = {
                            let mut c = counts.lock().unwrap();
                            let key = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            let n = c.entry(key.to_string()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if req.uri().path().starts_with("/slow") {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, std::convert::Infallible>(answer(&req, n))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, seen, task }
}

fn yaml(backend: SocketAddr, cache: &str) -> String {
    common::config(
        2,
        "",
        &format!(
            "pools:
  web:
    retries: 0
    cache: {{ {cache} }}
    backends:
      - {{ address: \"{backend}\" }}
"
        ),
    )
}

fn x_cache(r: &Reply) -> &str {
    r.headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_vary_and_what_is_never_stored() {
    let be = backend(Duration::ZERO).await;
    let lb = Autolb::start(&yaml(be.addr, ""));
    let mut c = Client::connect(lb.addr("web")).await;

    // Fresh: one backend request, then hits with an Age.
    let first = c.get("/fresh/a").await;
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let again = c.get("/fresh/a").await;
    assert_eq!((again.text(), x_cache(&again)), (first.text(), "HIT"));
    assert!(again.headers.contains_key("age"), "{:?}", again.headers);
    assert_eq!(be.seen("/fresh/a"), 1);
    // Another query string is another resource.
    assert_eq!(x_cache(&c.get("/fresh/a?x=1").await), "MISS");
    // A client asking for a validated answer goes to the backend (and refreshes the store).
    let reload = c
        .get_with("/fresh/a", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(
        (x_cache(&reload), reload.text().as_str()),
        ("MISS", "/fresh/a #2")
    );
    assert_eq!(c.get("/fresh/a").await.text(), "/fresh/a #2");

    // HEAD from the stored GET; a range of it.
    let head = c
        .request(
            http::Request::head("/fresh/a")
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(x_cache(&head), "MISS", "another host is another resource");
    let head = c
        .request(
            http::Request::head("/fresh/a")
                .header("host", lb.addr("web").to_string())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (head.status, x_cache(&head), head.body.len()),
        (200, "HIT", 0)
    );
    assert_eq!(head.headers["content-length"], "11");
    let part = c.get_with("/fresh/a", &[("range", "bytes=1-5")]).await;
    assert_eq!((part.status, part.text().as_str()), (206, "fresh"));
    assert_eq!(part.headers["content-range"], "bytes 1-5/11");
    let bad = c.get_with("/fresh/a", &[("range", "bytes=50-")]).await;
    assert_eq!(bad.status, 416);
    // The HEAD for another host went to the backend; nothing else did.
    assert_eq!(be.seen("/fresh/a"), 3);

    // Vary: one stored variant per normalized Accept-Language.
    let en = c.get_with("/vary", &[("accept-language", "en")]).await;
    let de = c.get_with("/vary", &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en), x_cache(&de)), ("MISS", "MISS"));
    let en2 = c.get_with("/vary", &[("accept-language", " en ")]).await;
    let de2 = c.get_with("/vary", &[("accept-language", "DE")]).await;
    assert_eq!((en2.text(), x_cache(&en2)), (en.text(), "HIT"));
    assert_eq!((de2.text(), x_cache(&de2)), (de.text(), "HIT"));
    assert_eq!(be.seen("/vary"), 2);

    // Never stored: no-store, private, Set-Cookie (each request reaches the backend).
    for path in ["/nostore", "/private", "/cookie"] {
        for i in 1..=3 {
            let r = c.get(path).await;
            assert_eq!((r.text(), x_cache(&r)), (format!("{path} #{i}"), "MISS"));
        }
        assert_eq!(be.seen(path), 3, "{path}");
    }
    // Each client gets its own cookie, never another's.
    let r = c.get("/cookie").await;
    assert_eq!(r.headers["set-cookie"], "session=4");
    // A request with Authorization is not answered from a response stored without
    // `public`/`s-maxage`/`must-revalidate`.
    let auth = c
        .get_with("/fresh/a", &[("authorization", "Bearer t")])
        .await;
    assert_eq!(x_cache(&auth), "MISS");
    assert_eq!(be.seen("/fresh/a"), 4);
    // Other methods bypass the cache, and a successful POST makes the URL's stored
    // responses go.
    let post = c
        .request(
            http::Request::post("/fresh/a")
                .header("host", lb.addr("web").to_string())
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await;
    assert_eq!(x_cache(&post), "BYPASS");
    assert_eq!(x_cache(&c.get("/fresh/a").await), "MISS");

    // The metrics, checked by promtool.
    let text = common::get(lb.admin, "/metrics").await.text();
    let hits = sample(
        &text,
        "autolb_cache_requests_total{pool=\"web\",result=\"hit\"}",
    );
    assert!(hits.is_some_and(|h| h >= 6.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "autolb_cache_requests_total{pool=\"web\",result=\"bypass\"}"
        ),
        Some(1.0)
    );
    let objects = sample(&text, "autolb_cache_objects{pool=\"web\"}").expect("objects");
    assert!(objects >= 3.0, "{text}");
    assert!(sample(&text, "autolb_cache_bytes{pool=\"web\"}").is_some_and(|b| b > 100.0));
    if let Some(promtool) = common::prom::promtool_or_skip("promtool check metrics") {
        let (ok, said) = common::prom::run(&promtool, &["check", "metrics"], Path::new("."), &text);
        assert!(ok && said.is_empty(), "promtool check metrics:\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditionals_and_revalidation() {
    let be = backend(Duration::ZERO).await;
    let lb = Autolb::start(&yaml(be.addr, "x_cache: true"));
    let mut c = Client::connect(lb.addr("web")).await;
    let first = c.get("/etag").await;
    assert_eq!(
        (first.text().as_str(), x_cache(&first)),
        ("/etag #1", "MISS")
    );
    // `no-cache`: every use is validated; the backend answers 304 and the stored body goes
    // out.
    let second = c.get("/etag").await;
    assert_eq!(
        (second.status, second.text().as_str(), x_cache(&second)),
        (200, "/etag #1", "HIT")
    );
    assert_eq!(be.seen("/etag"), 2);
    // The client's own conditional: 304 from the cache.
    let nm = c.get_with("/etag", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!((nm.status, nm.body.len()), (304, 0));
    assert_eq!(nm.headers["etag"], "\"v1\"");
    let other = c.get_with("/etag", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((other.status, other.text().as_str()), (200, "/etag #1"));

    // If-Modified-Since against a fresh stored response.
    c.get("/short").await;
    let ims = c
        .get_with(
            "/short",
            &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
        )
        .await;
    assert_eq!((ims.status, x_cache(&ims)), (304, "HIT"));
    let older = c
        .get_with(
            "/short",
            &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
        )
        .await;
    assert_eq!(older.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_backend_request() {
    let be = backend(Duration::from_millis(500)).await;
    let lb = Autolb::start(&yaml(be.addr, ""));
    let addr = lb.addr("web");
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Client::connect(addr).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { c.get("/slow").await });
    }
    let mut bodies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        assert_eq!(r.status, 200);
        bodies.push(r.text());
    }
    assert_eq!(bodies.len(), 100);
    assert!(bodies.iter().all(|b| b == "/slow #1"), "{bodies:?}");
    assert_eq!(be.seen("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_refreshes_in_the_background() {
    let be = backend(Duration::ZERO).await;
    let lb = Autolb::start(&yaml(
        be.addr,
        "stale_while_revalidate: 30s, stale_if_error: 60s",
    ));
    let mut c = Client::connect(lb.addr("web")).await;
    assert_eq!(c.get("/short").await.text(), "/short #1");
    // Once stale: served at once, refreshed in the background.
    let stale = common::wait_until(10, "a stale answer", || async {
        let r = Client::connect(lb.addr("web")).await.get("/short").await;
        (x_cache(&r) == "STALE").then_some(r)
    })
    .await;
    assert_eq!(stale.text(), "/short #1");
    common::wait_until(10, "the background refresh", || async {
        (be.seen("/short") >= 2).then_some(())
    })
    .await;
    let fresh = common::wait_until(10, "the refreshed response", || async {
        let r = Client::connect(lb.addr("web")).await.get("/short").await;
        (r.text() != "/short #1").then_some(r)
    })
    .await;
    assert_eq!(fresh.text(), "/short #2");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_when_the_backend_is_killed() {
    let be = backend(Duration::ZERO).await;
    let lb = Autolb::start(&yaml(
        be.addr,
        "stale_while_revalidate: 0s, stale_if_error: 60s",
    ));
    let addr = lb.addr("web");
    assert_eq!(common::get(addr, "/short").await.text(), "/short #1");
    assert_eq!(common::get(addr, "/fresh/b").await.status, 200);
    drop(be);
    // While fresh: hits. Once stale: the backend is gone, the stale copy answers.
    let r = common::wait_until(10, "a stale answer", || async {
        let r = common::get(addr, "/short").await;
        assert_eq!(r.text(), "/short #1", "{:?}", r.headers);
        (x_cache(&r) == "STALE").then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    // Nothing stored: the pool's error.
    assert_eq!(common::get(addr, "/fresh/other").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_bound_holds_under_a_flood_of_distinct_keys() {
    let be = backend(Duration::ZERO).await;
    let lb = Autolb::start(&yaml(be.addr, "max_size: 1MiB, max_object: 64KiB"));
    let mut c = Client::connect(lb.addr("web")).await;
    // Warm up (buffers, connections), then measure.
    for i in 0..100 {
        assert_eq!(c.get(&format!("/big/warm{i}")).await.status, 200);
    }
    let before = lb.rss_kib();
    // 3,000 distinct 16 KiB responses: 48 MiB through a 1 MiB cache.
    for i in 0..3000 {
        let r = c.get(&format!("/big/{i}")).await;
        assert_eq!((r.status, r.body.len()), (200, 16 << 10));
    }
    let after = lb.rss_kib();
    let text = common::get(lb.admin, "/metrics").await.text();
    let bytes = sample(&text, "autolb_cache_bytes{pool=\"web\"}").expect("bytes");
    assert!(bytes <= (1 << 20) as f64, "{bytes}");
    assert!(bytes > 0.0);
    // Unbounded, RSS would grow by 48 MiB.
    assert!(
        after.saturating_sub(before) < 16 << 10,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Some of it still answers from the cache.
    let recent = c.get("/big/2999").await;
    assert!(matches!(x_cache(&recent), "HIT" | "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_url_host_and_prefix() {
    let be = backend(Duration::ZERO).await;
    let token = "s3cret";
    let mut y = yaml(be.addr, "");
    y = y.replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_env: CACHE_TOKEN }",
    );
    let lb = Autolb::start_with_env(&y, &[("CACHE_TOKEN", token)]);
    let mut c = Client::connect(lb.addr("web")).await;
    let host = lb.addr("web").to_string();
    for p in ["/fresh/a", "/fresh/b", "/fresh/c?q=1", "/vary"] {
        c.get(p).await;
        assert_eq!(x_cache(&c.get(p).await), "HIT", "{p}");
    }
    let unauth = admin_post(
        lb.admin,
        "/cache/purge",
        None,
        &[],
        r#"{"url":"http://x/fresh/a"}"#,
    )
    .await;
    assert_eq!(unauth.status, 401);
    let bad = admin_post(
        lb.admin,
        "/cache/purge",
        Some(token),
        &[],
        r#"{"path":"/"}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    let url = format!(r#"{{"url":"http://{host}/fresh/a"}}"#);
    let r = admin_post(lb.admin, "/cache/purge", Some(token), &[], &url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(x_cache(&c.get("/fresh/a").await), "MISS");
    assert_eq!(x_cache(&c.get("/fresh/b").await), "HIT");

    let prefix = r#"{"host":"127.0.0.1","path_prefix":"/fresh/"}"#;
    let r = admin_post(lb.admin, "/cache/purge", Some(token), &[], prefix).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(x_cache(&c.get("/fresh/b").await), "MISS");
    assert_eq!(x_cache(&c.get("/fresh/c?q=1").await), "MISS");
    assert_eq!(x_cache(&c.get("/vary").await), "HIT");

    let all = r#"{"host":"127.0.0.1"}"#;
    assert_eq!(
        admin_post(lb.admin, "/cache/purge", Some(token), &[], all)
            .await
            .status,
        200
    );
    assert_eq!(x_cache(&c.get("/vary").await), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_cache_can_be_turned_off_and_routes_have_their_own() {
    let be = backend(Duration::ZERO).await;
    let y = common::config(
        1,
        "",
        &format!(
            "routes:
  - {{ path_prefix: /fresh/r, pool: web, cache: {{ max_size: 1MiB }} }}
pools:
  web:
    cache: {{ x_cache: false }}
    backends:
      - {{ address: \"{}\" }}
",
            be.addr
        ),
    );
    let lb = Autolb::start(&y);
    let mut c = Client::connect(lb.addr("web")).await;
    c.get("/fresh/p").await;
    let hit = c.get("/fresh/p").await;
    assert!(!hit.headers.contains_key("x-cache"));
    assert_eq!(be.seen("/fresh/p"), 1);
    c.get("/fresh/r").await;
    assert_eq!(x_cache(&c.get("/fresh/r").await), "HIT");
    assert_eq!(be.seen("/fresh/r"), 1);
}
