//! Shared state over TLS with an ACL user, against a real `redis-server --tls-port` that
//! requires client certificates (`tls-auth-clients yes`) and presents a certificate for a
//! name only (`redis.test`, reached on 127.0.0.1 through `sni`), from a test CA made with
//! rcgen. The user has only the commands autolb needs (the documented ACL): every shared
//! feature works and Redis denies nothing. A wrong name, a wrong password or no client
//! certificate keep autolb node-local with the reason; an unset `password_env` stops it.
//! A Redis Cluster over TLS (`tls-cluster yes`) is reached the same way, and `sni` with a
//! cluster is refused with its reason.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::redis::{acl_user, cli, free_port, Redis};
use common::shared::{
    app, leaders, metric, shared_pool, shared_session, status, wait_fleet, wait_status,
};
use common::tls::TestCa;
use common::Autolb;

struct Files {
    ca: String,
    cert: String,
    key: String,
}

fn config(backends: &[SocketAddr], node: u32, port: u16, tls: &str) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    rate_limit: {{ rate: 100000/s, scope: cluster }}\n    sticky: {{ learn_cookie: JSESSIONID }}\n    backends:\n{}{}state:\n  backend: redis\n  redis:\n    url: \"rediss://autolb@127.0.0.1:{port}\"\n    password_env: AUTOLB_REDIS_PASSWORD\n    tls: {{ {tls} }}\n",
            common::backend_list(backends, ""),
            shared_pool(node, 2),
        ),
    )
}

fn full(f: &Files) -> String {
    format!(
        "ca: \"{}\", client_cert: \"{}\", client_key: \"{}\", sni: redis.test",
        f.ca, f.cert, f.key
    )
}

fn node(cfg: &str, id: &str, password: &str) -> Autolb {
    Autolb::start_with_env(
        cfg,
        &[("AUTOLB_NODE_ID", id), ("AUTOLB_REDIS_PASSWORD", password)],
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_least_privilege_user_share_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("autolb test Redis CA");
    let ca_path = ca.write(dir.path(), "ca");
    let (server_cert, server_key) = ca.issue(&["redis.test"]).write(dir.path(), "server");
    let (client_cert, client_key) = ca
        .issue_with(&["autolb-node"], false, true)
        .write(dir.path(), "client");
    let tls_port = free_port();
    // The plain port is for the test's own redis-cli (default user); autolb uses TLS.
    let redis = Redis::start_with(
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path(&server_cert),
            "--tls-key-file",
            &path(&server_key),
            "--tls-ca-cert-file",
            &path(&ca_path),
            "--tls-auth-clients",
            "yes",
        ]
        .map(String::from)
        .to_vec(),
    );
    acl_user(redis.port, "autolb", "s3cret");
    let files = Files {
        ca: path(&ca_path),
        cert: path(&client_cert),
        key: path(&client_key),
    };
    let backends = [app("b0").await, app("b1").await];
    let a = node(
        &config(&backends, 0, tls_port, &full(&files)),
        "node-a",
        "s3cret",
    );
    let b = node(
        &config(&backends, 1, tls_port, &full(&files)),
        "node-b",
        "s3cret",
    );
    for lb in [&a, &b] {
        let s = wait_status(lb, 20, "never connected over TLS", |v| {
            v["mode"] == "shared"
        })
        .await;
        assert_eq!(s["kind"], "redis");
        assert_eq!(s["url"], format!("rediss://***@127.0.0.1:{tls_port}"));
    }
    // Every shared feature: learned sessions, the fleet, the lease and its fenced decision,
    // cluster rate limits.
    shared_session(&a, &b).await;
    wait_fleet(&[&a, &b], 30, "one leader and a decision", |s| {
        leaders(s).len() == 1
            && s.iter()
                .flatten()
                .all(|f| f["mode"] == "shared" && f["desired"] == 2)
    })
    .await;
    for lb in [&a, &b] {
        common::wait_until(10, "the other node in the fleet", || async {
            let c = common::get(lb.admin, "/cluster/status").await.json();
            (c["fleet"]["nodes_total"] == 2).then_some(())
        })
        .await;
        let mut c = common::Client::connect(lb.addr("web")).await;
        assert_eq!(c.get("/").await.status, 200);
        common::wait_until(10, "cluster rate limit shared", || async {
            (metric(lb, "autolb_rate_limit_node_local{pool=\"web\"}").await == Some(0.0))
                .then_some(())
        })
        .await;
    }
    // Nothing autolb sent was denied by the ACL, and no call failed.
    let log = cli(redis.port, &["ACL", "LOG"]);
    assert!(log.trim().is_empty(), "ACL LOG: {log}");
    for lb in [&a, &b] {
        let s = status(lb).await;
        assert_eq!(s["errors_total"], 0, "{s:#}");
    }
    let clients = cli(redis.port, &["CLIENT", "LIST"]);
    assert!(clients.contains("user=autolb"), "{clients}");

    // What does not get in stays node-local, saying why.
    let no_sni = format!(
        "ca: \"{}\", client_cert: \"{}\", client_key: \"{}\"",
        files.ca, files.cert, files.key
    );
    let no_client = format!("ca: \"{}\", sni: redis.test", files.ca);
    let cases = [
        (no_sni, "s3cret", "certificate"),
        (full(&files), "wrong", "auth"),
        (no_client, "s3cret", ""),
    ];
    for (i, (tls, password, why)) in cases.iter().enumerate() {
        let lb = node(
            &config(&backends, 2, tls_port, tls),
            &format!("bad-{i}"),
            password,
        );
        let s = wait_status(&lb, 10, "no error reported", |v| {
            v["last_error"].is_string()
        })
        .await;
        assert_eq!(s["mode"], "node-local", "{s:#}");
        let e = s["last_error"].as_str().unwrap_or("").to_ascii_lowercase();
        assert!(e.contains(why), "case {i}: {e}");
        // And it stays so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(status(&lb).await["mode"], "node-local");
    }
}

/// Redis Cluster over TLS (`tls-cluster yes`): the slot map read over TLS names the nodes'
/// TLS ports, and each node is verified against the address the cluster announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("autolb test Redis CA");
    let ca_path = ca.write(dir.path(), "ca");
    let (server_cert, server_key) = ca
        .issue(&["127.0.0.1", "redis.test"])
        .write(dir.path(), "server");
    let (client_cert, client_key) = ca
        .issue_with(&["autolb-node"], false, true)
        .write(dir.path(), "client");
    let tls_ports = std::cell::RefCell::new(Vec::new());
    let cluster = common::redis::Cluster::start_with(3, 0, 15_000, || {
        let port = free_port();
        tls_ports.borrow_mut().push(port);
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&server_cert),
            "--tls-key-file",
            &path(&server_key),
            "--tls-ca-cert-file",
            &path(&ca_path),
            "--tls-client-cert-file",
            &path(&client_cert),
            "--tls-client-key-file",
            &path(&client_key),
            "--tls-cluster",
            "yes",
        ]
        .map(String::from)
        .to_vec()
    });
    for n in &cluster.nodes {
        acl_user(n.port, "autolb", "s3cret");
    }
    let seed = tls_ports.borrow()[1];
    let tls = format!(
        "ca: \"{}\", client_cert: \"{}\", client_key: \"{}\"",
        path(&ca_path),
        path(&client_cert),
        path(&client_key)
    );
    let backends = [app("b0").await, app("b1").await];
    let a = node(&config(&backends, 0, seed, &tls), "node-a", "s3cret");
    let b = node(&config(&backends, 1, seed, &tls), "node-b", "s3cret");
    for lb in [&a, &b] {
        let s = wait_status(lb, 20, "never connected to the cluster over TLS", |v| {
            v["kind"] == "redis-cluster" && v["mode"] == "shared"
        })
        .await;
        let masters: Vec<&str> = s["topology"]["talking_to"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(masters.len(), 3, "{s:#}");
    }
    shared_session(&a, &b).await;
    wait_fleet(&[&a, &b], 30, "one leader", |s| leaders(s).len() == 1).await;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let log = cli(n.port, &["ACL", "LOG"]);
        assert!(log.trim().is_empty(), "node {i} ACL LOG: {log}");
    }
    for lb in [&a, &b] {
        let s = status(lb).await;
        assert_eq!(s["errors_total"], 0, "{s:#}");
    }
    // `sni` cannot apply to a cluster: refused, with the reason.
    let with_sni = format!("{tls}, sni: redis.test");
    let c = node(&config(&backends, 2, seed, &with_sni), "node-c", "s3cret");
    let s = wait_status(&c, 10, "sni not refused", |v| v["last_error"].is_string()).await;
    assert_eq!(s["mode"], "node-local");
    assert!(
        s["last_error"].as_str().is_some_and(|e| e.contains("sni")),
        "{s:#}"
    );
}

#[test]
fn an_unset_password_env_stops_autolb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("autolb.yaml");
    let yaml = common::config(
        1,
        "",
        "pools:\n  web:\n    backends: [{ address: \"127.0.0.1:9\" }]\nstate:\n  backend: redis\n  redis: { url: \"redis://127.0.0.1:9\", password_env: AUTOLB_TEST_UNSET_PASSWORD }\n",
    );
    std::fs::write(&cfg, yaml).expect("write");
    let mut child = common::command(common::AUTOLB)
        .args(["run", "-c"])
        .arg(&cfg)
        .env_remove("AUTOLB_TEST_UNSET_PASSWORD")
        .env("TMPDIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn autolb");
    let code = common::poll_blocking(Duration::from_secs(20), Duration::from_millis(50), || {
        child.try_wait().expect("wait")
    });
    let Some(code) = code else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("autolb started without its Redis password");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!code.success());
    assert!(
        err.contains("password_env names AUTOLB_TEST_UNSET_PASSWORD"),
        "{err}"
    );
}
