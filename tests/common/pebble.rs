//! A real ACME server for tests: Debian's `pebble` (Let's Encrypt's test CA) on loopback
//! ports, with challenge validation on (`PEBBLE_VA_ALWAYS_VALID` removed), no random sleeps,
//! no rejected nonces and no reused authorizations, resolving every name to 127.0.0.1
//! through `pebble-challtestsrv`'s DNS server. Its own TLS certificate comes from a test CA
//! made here; its root (what it issues under) is fetched from its management port. Both
//! processes are killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::redis::free_port;
use super::tls::{self as t, TestCa};
use super::{collect, command, Proc};

pub struct Pebble {
    /// The directory URL.
    pub directory: String,
    /// The CA bundle that verifies pebble's own HTTPS (`tls.acme.ca`).
    pub ca_path: PathBuf,
    /// The root pebble issues under.
    pub root: CertificateDer<'static>,
    pub proc: Proc,
    _dns: Proc,
}

/// Whether pebble is installed (`.ci/run` installs it).
pub fn installed() -> bool {
    Path::new("/usr/bin/pebble").exists() || which("pebble")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
}

impl Pebble {
    /// Start pebble validating http-01 on 127.0.0.1:`http_port` and tls-alpn-01 on
    /// 127.0.0.1:`tls_port`; files go into `dir`. Waits until its root can be fetched.
    pub async fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        let ca = TestCa::new("pebble's test CA");
        let ca_path = ca.write(dir, "pebble-ca");
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]).write(dir, "pebble");
        let (acme_port, mgmt_port, dns_port, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port());
        let config = dir.join("pebble.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(&config, json.to_string()).expect("pebble config");
        let dns = command("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let dns = Proc {
            child: dns,
            log: Default::default(),
        };
        let mut child = command("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let log = collect(child.stdout.take().expect("stdout"));
        let proc = Proc { child, log };
        // Wait for the DNS server's management port and pebble's root.
        super::wait_until(30, "pebble-challtestsrv to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", dns_mgmt))
                .await
                .ok()
        })
        .await;
        let mgmt: SocketAddr = format!("127.0.0.1:{mgmt_port}").parse().expect("addr");
        let root = super::wait_until_or(
            30,
            || fetch_root(mgmt, &ca),
            || format!("pebble did not start; log:\n{}", proc.log()),
        )
        .await;
        Pebble {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_path,
            root,
            proc,
            _dns: dns,
        }
    }

    /// Roots that verify what pebble issues.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("pebble root");
        roots
    }
}

/// `GET /roots/0` on pebble's management port (its TLS verified by `ca`).
async fn fetch_root(mgmt: SocketAddr, ca: &TestCa) -> Option<CertificateDer<'static>> {
    let stream = t::connect(mgmt, "127.0.0.1", &t::connector(ca, &[b"http/1.1"], false))
        .await
        .ok()?;
    let reply = t::get1(&mut t::h1(stream).await, "127.0.0.1", "/roots/0").await;
    if reply.status != 200 {
        return None;
    }
    let pem = reply.text();
    let der = rustls_pemfile_der(&pem)?;
    Some(der)
}

/// The first certificate of a PEM text.
fn rustls_pemfile_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}
