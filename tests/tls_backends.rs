//! TLS to backends through the real `autolb`: https with a verified server name and mTLS
//! (a client certificate), HTTP/2 over TLS (ALPN h2) and with prior knowledge (h2c), and the
//! active health check over the same TLS.

mod common;

use bytes::Bytes;
use common::tls::{self as t, eventually, TestCa};
use common::Autolb;
use http_body_util::Full;

#[tokio::test]
async fn tls_and_mtls_and_h2_to_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend_ca = TestCa::new("backend CA");
    let client_ca = TestCa::new("client CA");
    let server = backend_ca.issue(&["backend.test"]);
    let client = client_ca.issue_with(&["autolb-client"], false, true);
    let (client_cert, client_key) = client.write(dir.path(), "client");
    let ca_file = backend_ca.write(dir.path(), "backend-ca");
    let backend = t::tls_backend("tb", &server, Some(&client_ca)).await;
    let open_backend = t::tls_backend("open", &server, None).await;
    let tls = |extra: &str| {
        format!("{{ sni: backend.test, ca: {ca_file:?}, client_cert: {client_cert:?}, client_key: {client_key:?}{extra} }}")
    };
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: mtls }}
routes:
  - {{ path_prefix: /h2, pool: h2 }}
  - {{ path_prefix: /nocert, pool: nocert }}
  - {{ path_prefix: /wrongname, pool: wrongname }}
pools:
  mtls:
    tls: {}
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 1s }}
    backends: [{{ address: \"{backend}\" }}]
  h2:
    protocol: h2
    tls: {}
    backends: [{{ address: \"{backend}\" }}]
  nocert:
    retries: 0
    tls: {{ sni: backend.test, ca: {ca_file:?} }}
    backends: [{{ address: \"{backend}\" }}]
  wrongname:
    retries: 0
    tls: {{ sni: other.test, ca: {ca_file:?} }}
    backends: [{{ address: \"{open_backend}\" }}]
",
        tls(""),
        tls(""),
    );
    let lb = Autolb::start(&yaml);
    let mut c = common::Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-client-cert"], "autolb-client");
        assert_eq!(r.headers["x-version"], "HTTP/1.1");
    }
    for _ in 0..3 {
        let r = c.get("/h2/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-client-cert"], "autolb-client");
        assert_eq!(r.headers["x-version"], "HTTP/2.0");
    }
    assert_eq!(
        c.get("/nocert").await.status,
        502,
        "the backend requires a client certificate"
    );
    assert_eq!(
        c.get("/wrongname").await.status,
        502,
        "the name is verified"
    );
    // The active check speaks TLS (with the client certificate) too.
    let checked = eventually(20, || async {
        let j = common::get(lb.admin, "/loadbalancer/status").await.json();
        j.to_string().contains("status 200")
    })
    .await;
    assert!(
        checked,
        "health check over TLS never passed; log:\n{}",
        lb.proc.log()
    );
}

#[tokio::test]
async fn h2c_to_backends_with_prior_knowledge() {
    let backend = common::raw_backend(|tcp| async move {
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let resp = http::Response::builder()
                    .header("x-version", format!("{:?}", req.version()))
                    .header(
                        "x-authority",
                        req.uri().authority().map_or("-".into(), |a| a.to_string()),
                    )
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(resp)
            });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .await;
    })
    .await;
    let pools = format!(
        "pools:\n  web:\n    protocol: h2\n    backends:\n{}",
        common::backend_list(&[backend], "")
    );
    let lb = Autolb::start(&common::config(1, "", &pools));
    let mut c = common::Client::connect(lb.addr("web")).await;
    for _ in 0..3 {
        let r = c.get_with("/", &[("host", "app.test")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-version"], "HTTP/2.0");
        assert_eq!(r.headers["x-authority"], "app.test");
    }
}
