//! Certificate reload without restart through the real `autolb`: a pair replaced on disk is
//! served on the next handshake while open connections keep theirs; a bad pair (not PEM, a
//! key of another certificate) is refused loudly and the old one keeps serving; a config
//! reload swaps in new certificate files, or is refused with FILE:LINE:COL errors, and starts
//! a new https listener.

mod common;

use common::tls::{self as t, eventually, https_config, metric, TestCa};
use common::{echo, Autolb};

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_on_the_next_handshake() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    let (cert, key) = one.write(dir.path(), "a");
    let lb = Autolb::start(&https_config(
        &[(cert.clone(), key.clone())],
        "",
        "",
        "",
        &[e.addr],
    ));
    let addr = lb.addr("secure");
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);
    let mut open = t::h1(
        t::connect(addr, "a.test", &t::connector(&ca, &[], false))
            .await
            .expect("tls"),
    )
    .await;
    assert_eq!(t::get1(&mut open, "a.test", "/").await.status, 200);

    let two = ca.issue(&["a.test"]);
    t::replace_file(&key, two.key_pem.as_bytes());
    t::replace_file(&cert, two.cert_pem.as_bytes());
    let swapped = eventually(30, || async {
        t::presented_for(addr, "a.test")
            .await
            .is_ok_and(|c| c == two.der)
    })
    .await;
    assert!(
        swapped,
        "new certificate not served; log:\n{}",
        lb.proc.log()
    );
    // The connection opened before the swap is untouched.
    assert_eq!(t::get1(&mut open, "a.test", "/").await.status, 200);
    assert!(
        metric(
            &lb,
            "autolb_tls_certificate_reloads_total{listener=\"secure\",result=\"success\"}"
        )
        .await
            >= 1
    );
    assert!(lb.proc.log().contains("certificate reloaded"));
}

#[tokio::test]
async fn a_bad_certificate_is_refused_and_the_old_one_keeps_serving() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    let (cert, key) = one.write(dir.path(), "a");
    let lb = Autolb::start(&https_config(
        &[(cert.clone(), key.clone())],
        "",
        "",
        "",
        &[e.addr],
    ));
    let addr = lb.addr("secure");
    let refusals = || lb.proc.log().matches("certificate reload refused").count();

    // Not PEM at all.
    t::replace_file(&cert, b"this is not a certificate\n");
    assert!(
        eventually(30, || async { refusals() >= 1 }).await,
        "log:\n{}",
        lb.proc.log()
    );
    assert!(
        lb.proc.log().contains("no certificate found"),
        "{}",
        lb.proc.log()
    );
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);

    // A valid certificate with somebody else's key.
    let (two, three) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    t::replace_file(&key, three.key_pem.as_bytes());
    t::replace_file(&cert, two.cert_pem.as_bytes());
    // (A reload may see the new key with the garbage certificate first: refused too.)
    assert!(
        eventually(30, || async {
            lb.proc.log().contains("does not match certificate")
        })
        .await,
        "{}",
        lb.proc.log()
    );
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);
    let failed = "autolb_tls_certificate_reloads_total{listener=\"secure\",result=\"failure\"}";
    assert!(metric(&lb, failed).await >= 2);

    // Fixed: the new pair is served.
    t::replace_file(&key, two.key_pem.as_bytes());
    let fixed = eventually(30, || async {
        t::presented_for(addr, "a.test")
            .await
            .is_ok_and(|c| c == two.der)
    })
    .await;
    assert!(fixed, "log:\n{}", lb.proc.log());
}

#[tokio::test]
async fn a_config_reload_swaps_in_new_certificate_files_or_is_refused() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    let first = one.write(dir.path(), "one");
    let lb = Autolb::start(&https_config(&[first], "", "", "", &[e.addr]));
    let addr = lb.addr("secure");
    let reload = || async {
        let req = http::Request::post("/config/reload")
            .header("content-type", "application/json")
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        common::Client::connect(lb.admin).await.request(req).await
    };

    // New files, and a second certificate (a new name) for the listener.
    let two = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test"]);
    let pairs = [two.write(dir.path(), "two"), b.write(dir.path(), "b")];
    let yaml = https_config(&pairs, "", "", "", &[e.addr]);
    std::fs::write(&lb.config, &yaml).expect("write config");
    let r = reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == two.der);
    assert!(t::presented_for(addr, "b.test").await.expect("handshake") == b.der);

    // A config naming a bad file is refused whole, at the line of the path.
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "garbage").expect("write");
    let bad = https_config(
        &[(garbage.clone(), pairs[0].1.clone())],
        "",
        "",
        "",
        &[e.addr],
    );
    std::fs::write(&lb.config, &bad).expect("write config");
    let r = reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    let line = bad
        .lines()
        .position(|l| l.contains("garbage.crt"))
        .expect("line")
        + 1;
    let expected = format!("{}:{line}:", lb.config.display());
    assert!(r.text().contains(&expected), "{expected} in {}", r.text());
    assert!(r.text().contains("no certificate found"), "{}", r.text());
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == two.der);
    assert!(
        eventually(10, || async {
            t::presented_for(addr, "b.test")
                .await
                .is_ok_and(|c| c == b.der)
        })
        .await
    );
}

#[tokio::test]
async fn a_new_https_listener_starts_on_reload() {
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let cert = ca.issue(&["a.test"]);
    let (c, k) = cert.write(dir.path(), "a");
    let pools = format!(
        "pools:\n  web:\n    backends:\n{}",
        common::backend_list(&[e.addr], "")
    );
    let lb = Autolb::start(&common::config(1, "", &pools));
    let https = format!(
        "  - {{ name: secure, listen: \"127.0.0.1:0\", protocol: https, pool: web,\n      \
         tls: {{ certificates: [{{ cert: {c:?}, key: {k:?} }}] }} }}\n"
    );
    let yaml = common::config(1, "", &format!("{https}{pools}"));
    std::fs::write(&lb.config, &yaml).expect("write config");
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = common::Client::connect(lb.admin).await.request(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Its address is in the log ("listening listener=secure addr=...").
    let mut addr = None;
    let found = eventually(20, || {
        addr = lb.proc.log().lines().find_map(|l| {
            let rest = l.split("listener=secure addr=").nth(1)?;
            rest.split_whitespace()
                .next()?
                .parse::<std::net::SocketAddr>()
                .ok()
        });
        let found = addr.is_some();
        async move { found }
    })
    .await;
    assert!(found, "log:\n{}", lb.proc.log());
    let addr = addr.expect("address");
    let s = t::connect(addr, "a.test", &t::connector(&ca, &[], false))
        .await
        .expect("handshake");
    let r = t::get1(&mut t::h1(s).await, "a.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "e"));
}

/// A Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..TIMESTAMP`. An
/// update swaps `..data`; a later edit lands in the directory it points to. Both are served
/// (the config file's watcher, which follows the links, watches the certificates too).
#[tokio::test]
async fn a_secret_volume_update_and_an_edit_in_its_new_directory_are_served() {
    use std::os::unix::fs::symlink;
    let e = echo("e");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("secret");
    std::fs::create_dir_all(root.join("..t1")).expect("mkdir");
    let ca = TestCa::new("test CA");
    let one = ca.issue(&["a.test"]);
    one.write(&root.join("..t1"), "tls");
    symlink("..t1", root.join("..data")).expect("..data");
    for f in ["tls.crt", "tls.key"] {
        symlink(format!("..data/{f}"), root.join(f)).expect("link");
    }
    let lb = Autolb::start(&https_config(
        &[(root.join("tls.crt"), root.join("tls.key"))],
        "",
        "",
        "",
        &[e.addr],
    ));
    let addr = lb.addr("secure");
    assert!(t::presented_for(addr, "a.test").await.expect("handshake") == one.der);

    // The kubelet's update: a new directory, `..data` renamed onto it, the old one removed.
    let two = ca.issue(&["a.test"]);
    std::fs::create_dir(root.join("..t2")).expect("mkdir");
    two.write(&root.join("..t2"), "tls");
    symlink("..t2", root.join("..data_tmp")).expect("link");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..t1")).expect("remove");
    let served = |want: rustls_pki_types::CertificateDer<'static>| async move {
        t::presented_for(addr, "a.test")
            .await
            .is_ok_and(|c| c == want)
    };
    assert!(
        eventually(30, || served(two.der.clone())).await,
        "{}",
        lb.proc.log()
    );

    // An edit inside the directory `..data` points to now (both files in one rename each).
    let three = ca.issue(&["a.test"]);
    let staged = tempfile::tempdir().expect("tempdir");
    let (c, k) = three.write(staged.path(), "tls");
    t::replace_file(&root.join("..t2/tls.key"), &std::fs::read(k).expect("key"));
    t::replace_file(&root.join("..t2/tls.crt"), &std::fs::read(c).expect("cert"));
    assert!(
        eventually(30, || served(three.der.clone())).await,
        "{}",
        lb.proc.log()
    );
}
