//! `autolb check` on TLS settings and the files they name: a bad PEM, a DER file, a key that
//! does not match its certificate, an unreadable file, a bad CA bundle, each reported as
//! FILE:LINE:COL at the path that names it; an expired certificate is only a warning.

mod common;

use std::path::Path;

use common::tls::TestCa;

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in yaml"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn assert_reported(err: &str, file: &Path, at: (usize, usize), needle: &str) {
    let prefix = format!("{}:{}:{}: ", file.display(), at.0, at.1);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "no error {prefix}...{needle}... in:\n{err}"
    );
}

fn listener_with(pairs: &[(&str, &str)], pool_tls: &str) -> String {
    let list: String = pairs
        .iter()
        .map(|(c, k)| format!("        - {{ cert: {c}, key: {k} }}\n"))
        .collect();
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: secure
    listen: 127.0.0.1:0
    protocol: https
    pool: web
    tls:
      certificates:
{list}pools:
  web:
{pool_tls}    backends: [{{ address: 127.0.0.1:3001 }}]
"
    )
}

#[test]
fn bad_certificate_files_are_reported_at_their_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = TestCa::new("test CA");
    let good = ca.issue(&["a.test"]);
    good.write(d, "good");
    std::fs::write(d.join("garbage.crt"), "not a certificate\n").expect("write");
    std::fs::write(d.join("der.crt"), good.der.as_ref()).expect("write");
    std::fs::write(
        d.join("cut.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
    )
    .expect("write");
    std::fs::write(d.join("other.key"), ca.issue(&["b.test"]).key_pem).expect("write");
    std::fs::write(d.join("nokey.key"), "no key here\n").expect("write");
    std::fs::write(d.join("bad-ca.pem"), "nothing\n").expect("write");
    let yaml = listener_with(
        &[
            ("good.crt", "good.key"),
            ("garbage.crt", "good.key"),
            ("der.crt", "good.key"),
            ("cut.crt", "good.key"),
            ("good.crt", "other.key"),
            ("good.crt", "nokey.key"),
            ("missing.crt", "good.key"),
        ],
        "    tls: { ca: bad-ca.pem }\n",
    );
    let file = d.join("autolb.yaml");
    std::fs::write(&file, &yaml).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 1, "{out}{err}");
    assert_reported(
        &err,
        &file,
        pos(&yaml, "garbage.crt"),
        "no certificate found",
    );
    assert_reported(&err, &file, pos(&yaml, "der.crt"), "looks like DER");
    assert_reported(
        &err,
        &file,
        pos(&yaml, "cut.crt"),
        "invalid PEM: missing \"-----END CERTIFICATE-----\"",
    );
    assert_reported(
        &err,
        &file,
        pos(&yaml, "other.key"),
        "does not match certificate",
    );
    assert_reported(&err, &file, pos(&yaml, "nokey.key"), "no private key found");
    assert_reported(
        &err,
        &file,
        pos(&yaml, "missing.crt"),
        "cannot read certificate",
    );
    assert_reported(&err, &file, pos(&yaml, "bad-ca.pem"), "pool \"web\": ca");
    assert!(err.contains("7 error(s)"), "{err}");
}

#[test]
fn an_expired_certificate_is_a_warning_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    ca.issue_with(&["old.test"], true, false)
        .write(dir.path(), "old");
    let yaml = listener_with(&[("old.crt", "old.key")], "");
    let file = dir.path().join("autolb.yaml");
    std::fs::write(&file, &yaml).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 0, "{out}{err}");
    assert_reported(&err, &file, pos(&yaml, "old.crt"), "warning: certificate");
    assert!(err.contains("expired on"), "{err}");
    assert!(out.contains(": ok:"), "{out}");
}

#[test]
fn tls_and_http_version_settings_are_checked() {
    let yaml = "admin: { listen: \"127.0.0.1:0\" }
listeners:
  - { name: a, listen: 127.0.0.1:0, protocol: https, pool: web, h2c: true,
      tls: { certificates: [{ cert: a.crt, key: a.key }] } }
  - { name: b, listen: 127.0.0.1:0, protocol: https, pool: web, redirect_https: true,
      tls: { certificates: [{ cert: a.crt, key: a.key }], strict_snii: true } }
  - { name: c, listen: 127.0.0.1:0, pool: web, https_port: 8443, hsts: { max_age: 1d } }
  - { name: d, listen: 127.0.0.1:0, pool: web, redirect_https: true, https_port: 70000 }
  - { name: e, listen: 127.0.0.1:0, protocol: https, pool: web,
      hsts: { max_age: 30d, preload: true }, tls: { certificates: [{ cert: a.crt, key: a.key }] } }
  - { name: f, listen: 127.0.0.1:0, protocol: https, pool: web, redirect_https: true,
      tls: { certificates: [{ cert: a.crt, key: a.key }] } }
pools:
  web:
    protocol: h3
    backends: [{ address: 127.0.0.1:3001 }]
  api:
    tls: { sni: \"bad name!\", client_cert: c.crt }
    backends: [{ address: 127.0.0.1:3002 }]
";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("autolb.yaml");
    std::fs::write(&file, yaml).expect("write");
    let (code, out, err) = common::check(&file);
    assert_eq!(code, 1, "{out}{err}");
    // The position right after `prefix` (the value it introduces).
    let after = |prefix: &str| {
        let (line, col) = pos(yaml, prefix);
        (line, col + prefix.chars().count())
    };
    for (at, message) in [
        (after("h2c: "), "h2c is only allowed on http listeners"),
        (pos(yaml, "strict_snii"), "unknown field \"strict_snii\""),
        (
            after("name: f, listen: 127.0.0.1:0, protocol: https, pool: web, redirect_https: "),
            "redirect_https is only allowed on http listeners",
        ),
        (
            after("https_port: "),
            "https_port needs redirect_https: true",
        ),
        (
            after("8443, hsts: "),
            "hsts is only allowed on https listeners",
        ),
        (pos(yaml, "70000"), "https_port must be between 1 and 65535"),
        (
            after("      hsts: "),
            "hsts preload needs include_subdomains",
        ),
        (
            pos(yaml, "h3"),
            "unknown value \"h3\", expected one of: h1, h2",
        ),
        (pos(yaml, "\"bad name!\""), "invalid sni"),
        (after("client_cert: "), "client_cert needs client_key"),
    ] {
        assert_reported(&err, &file, at, message);
    }
}
