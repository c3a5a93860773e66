//! Email alerts end to end against a real SMTP server (PyPI's aiosmtpd, storing what it
//! receives in a Maildir): the first alert of a kind is mailed at once, what follows within
//! `min_interval` goes in one later mail, other kinds are not held back, every recipient
//! gets it; `starttls: always` refuses a server without STARTTLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use common::{backend_list, config, Autolb, Proc};

/// `python3 -m aiosmtpd` on a free port, saving mails into `dir` (a Maildir).
struct Smtp {
    addr: SocketAddr,
    dir: PathBuf,
    _proc: Proc,
}

/// aiosmtpd's availability: `.ci/run` installs it with pip; elsewhere the test skips, saying
/// so (a failure in CI).
fn aiosmtpd_or_skip(test: &str) -> bool {
    let found = common::command("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: aiosmtpd missing in CI (.ci/run installs it with pip)");
        }
        eprintln!("SKIPPED {test}: no aiosmtpd (pip install aiosmtpd)");
    }
    found
}

impl Smtp {
    async fn start(dir: &Path) -> Smtp {
        let maildir = dir.join("maildir");
        // A port that was free a moment ago; aiosmtpd cannot report one it picked itself.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let mut child = common::command("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &addr.to_string()])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let log = common::collect(child.stderr.take().expect("stderr"));
        let proc = Proc { child, log };
        common::wait_until(20, "aiosmtpd listening", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Smtp {
            addr,
            dir: maildir,
            _proc: proc,
        }
    }

    /// Every mail received so far, oldest first.
    fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> =
            std::fs::read_dir(self.dir.join("new"))
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            let at = e.metadata().and_then(|m| m.modified());
                            (at.unwrap_or(std::time::UNIX_EPOCH), e.path())
                        })
                        .collect()
                })
                .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
            .map(|t| Mail::parse(&t))
            .collect()
    }
}

/// One received mail: unfolded headers and the body.
#[derive(Debug, Clone)]
struct Mail {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn parse(text: &str) -> Mail {
        let text = text.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut mail = Mail {
            headers,
            body: body.to_string(),
        };
        if mail.header("content-transfer-encoding") == "quoted-printable" {
            mail.body = unquote(&mail.body);
        }
        mail
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn subject(&self) -> &str {
        self.header("subject")
    }
}

/// Decode quoted-printable (soft line breaks and `=XX`).
fn unquote(s: &str) -> String {
    let s = s.replace("=\n", "");
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn refuse_reload(admin: SocketAddr) {
    let mut c = common::Client::connect(admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(c.request(req).await.status, 400);
}

#[tokio::test]
async fn one_mail_per_kind_and_interval_to_every_recipient() {
    if !aiosmtpd_or_skip("one_mail_per_kind_and_interval_to_every_recipient") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = Smtp::start(dir.path()).await;
    let mut a = common::echo("a");
    let yaml = config(
        1,
        "",
        &format!(
            "alerts:
  batch: 200ms
  events: [backend_down, pool_down, reload_failed]
  email:
    smtp: \"{smtp}\"
    from: \"autolb <autolb@example.com>\"
    to: [ops@example.com, oncall@example.com]
    starttls: auto
    min_interval: 3s
pools:
  web:
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    backends:
{list}",
            smtp = smtp.addr,
            list = backend_list(&[a.addr], ""),
        ),
    );
    let lb = Autolb::start(&yaml);

    // A broken file: its reload is refused and mailed at once.
    std::fs::write(&lb.config, format!("{yaml}  broken: [\n")).expect("write");
    let first = common::wait_until(20, "the first reload_failed mail", || async {
        smtp.mails()
            .into_iter()
            .find(|m| m.subject().contains("] reload_failed: "))
    })
    .await;
    assert!(first.subject().starts_with("[autolb "), "{first:?}");
    assert!(
        first.header("x-rcptto").contains("ops@example.com")
            && first.header("x-rcptto").contains("oncall@example.com"),
        "{first:?}"
    );
    assert!(
        first.header("from").contains("autolb@example.com"),
        "{first:?}"
    );
    assert!(first.body.contains("config reload"), "{}", first.body);

    // Three more refusals within the interval: held, then one mail with all three.
    for _ in 0..3 {
        refuse_reload(lb.admin).await;
    }
    // Meanwhile another kind is not held back by them.
    let _ = a.proc.child.kill();
    let _ = a.proc.child.wait();
    let down = common::wait_until(20, "the backend_down mail", || async {
        smtp.mails()
            .into_iter()
            .find(|m| m.subject().contains("] backend_down: "))
    })
    .await;
    assert!(down.body.contains(&a.addr.to_string()), "{}", down.body);
    let reloads = || {
        smtp.mails()
            .into_iter()
            .filter(|m| m.subject().contains("] reload_failed: "))
            .collect::<Vec<_>>()
    };
    let second = common::wait_until(20, "the second reload_failed mail", || async {
        let r = reloads();
        (r.len() >= 2).then(|| r[1].clone())
    })
    .await;
    let admin_alerts = second.body.matches("\"trigger\": \"admin\"").count();
    assert_eq!(admin_alerts, 3, "{}", second.body);
    assert!(second.subject().contains("(+"), "{}", second.subject());
    let pool_down = smtp
        .mails()
        .into_iter()
        .filter(|m| m.subject().contains("] pool_down: "))
        .count();
    assert!(pool_down <= 1);
    // Nothing else of that kind came: two reload mails for four refusals.
    assert_eq!(reloads().len(), 2);
}

#[tokio::test]
async fn starttls_always_refuses_a_server_without_it() {
    if !aiosmtpd_or_skip("starttls_always_refuses_a_server_without_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = Smtp::start(dir.path()).await;
    let a = common::echo("a");
    let yaml = config(
        1,
        "",
        &format!(
            "alerts:
  batch: 100ms
  retries: 0
  email: {{ smtp: \"{smtp}\", from: autolb@example.com, to: [ops@example.com], starttls: always }}
pools:
  web:
    backends:
{list}",
            smtp = smtp.addr,
            list = backend_list(&[a.addr], ""),
        ),
    );
    let lb = Autolb::start(&yaml);
    std::fs::write(&lb.config, format!("{yaml}  broken: [\n")).expect("write");
    refuse_reload(lb.admin).await;
    assert!(
        lb.proc
            .log_shows("alert mail not delivered", Duration::from_secs(20)),
        "{}",
        lb.proc.log()
    );
    assert!(smtp.mails().is_empty(), "nothing went out in plain text");
}
