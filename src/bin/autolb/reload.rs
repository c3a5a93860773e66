//! `autolb reload -c FILE`: validate FILE, then have the autolb serving it apply it: through
//! the admin API (`POST /config/reload`, answered with the changes or the errors), or, when
//! a new binary was installed over the one it runs, by starting that binary as its
//! successor (`autolb run --upgrade`), which takes over its sockets; the old one drains.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use autolb::config::Config;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::{check, err, out, report, ReloadArgs};

pub fn main(args: ReloadArgs) -> ExitCode {
    let cfg = match check::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            check::print_errors(&args.config, &errors, true);
            err(format_args!(
                "{}: {} error(s); the running autolb was not asked to reload",
                args.config.display(),
                errors.len()
            ));
            return ExitCode::FAILURE;
        }
    };
    for w in &cfg.warnings {
        err(format_args!("{w}"));
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
        .and_then(|rt| rt.block_on(reload(&args, &cfg)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            err(format_args!("autolb reload: {}", report(&e)));
            ExitCode::FAILURE
        }
    }
}

async fn reload(args: &ReloadArgs, cfg: &Config) -> anyhow::Result<()> {
    let admin = Admin::of(cfg, args.timeout);
    let health = admin.get("/health").await?;
    let pid = health["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    // The file as the running autolb names it (a successor must name it the same way: the
    // hand-over socket's path derives from it).
    let mut served = args.config.clone();
    if let (Some(source), Some(pid)) = (health["config"]["source"].as_str(), pid) {
        served = same_config(&args.config, Path::new(source), pid, admin.addr)?;
    }
    let upgrade = match pid {
        _ if args.upgrade => true,
        Some(pid) => match replaced_by_us(pid) {
            Ok(replaced) => replaced,
            Err(e) => {
                err(format_args!(
                    "autolb reload: cannot tell whether pid {pid} runs an older binary ({e}); reloading the config only"
                ));
                false
            }
        },
        None => false,
    };
    if upgrade {
        let pid = pid.context(
            "the running autolb does not say its pid: it predates `reload`; restart it once",
        )?;
        hand_over(args, &served, &admin, pid).await
    } else {
        apply(&args.config, &admin, cfg).await
    }
}

/// `POST /config/reload`: print what changed, or the errors.
async fn apply(path: &Path, admin: &Admin, cfg: &Config) -> anyhow::Result<()> {
    let (status, body) = admin.request(Method::POST, "/config/reload").await?;
    match status {
        StatusCode::OK => {
            out(format_args!(
                "{}: reloaded: generation {}, config hash {}",
                path.display(),
                body["generation"],
                body["config_hash"].as_str().unwrap_or("?")
            ));
            let changes = body["changes"].as_array().cloned().unwrap_or_default();
            if changes.is_empty() {
                out(format_args!("  no changes"));
            }
            for c in changes {
                out(format_args!("  {}", c.as_str().unwrap_or_default()));
            }
            Ok(())
        }
        StatusCode::BAD_REQUEST => {
            for e in body["errors"].as_array().into_iter().flatten() {
                err(format_args!("{}", e.as_str().unwrap_or_default()));
            }
            bail!(
                "the running autolb refused {}: nothing changed",
                path.display()
            )
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
            "the admin API at {} refused the request ({status}: {}); {}",
            admin.addr,
            body["error"].as_str().unwrap_or_default(),
            match &cfg.admin.token_env {
                Some(v) => format!("is {v} the token the running autolb started with?"),
                None => "set admin.token_env to the variable holding its token".into(),
            }
        ),
        _ => bail!(
            "POST /config/reload at {} answered {status}: {body}",
            admin.addr
        ),
    }
}

/// Zero-downtime upgrade: start the binary we run from as `run --upgrade` (in our process
/// group's stead, in its own, so that a Ctrl-C here does not reach it), and wait until the
/// old process has handed over, drained and exited.
async fn hand_over(
    args: &ReloadArgs,
    config: &Path,
    admin: &Admin,
    old: u32,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the autolb binary")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["run", "--upgrade", "-c"]).arg(config);
    if let Some(socket) = &args.upgrade_socket {
        cmd.arg("--upgrade-socket").arg(socket);
    }
    cmd.stdin(Stdio::null()).process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let new = child.id();
    out(format_args!(
        "upgrade: started {} (pid {new}) to take over from pid {old}",
        exe.display()
    ));
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the new autolb (pid {new}) exited ({status}) before taking over; pid {old} still serves (its log says why)");
        }
        if !alive(old) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let serving = admin
                .get("/health")
                .await
                .ok()
                .and_then(|h| h["pid"].as_u64());
            if serving == Some(u64::from(new)) {
                out(format_args!(
                    "upgrade: pid {new} serves; pid {old} is still draining after {:?}",
                    args.timeout
                ));
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pid {new} did not take over within {:?}: stopped it; pid {old} still serves",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = admin.get("/health").await?;
    if health["pid"].as_u64() != Some(u64::from(new)) {
        bail!(
            "pid {old} exited, but the admin API answers from pid {} instead of {new}",
            health["pid"]
        );
    }
    out(format_args!(
        "upgrade: done: pid {new} ({}) serves {}",
        health["version"].as_str().unwrap_or("?"),
        config.display()
    ));
    Ok(())
}

/// Whether process `pid` runs (neither gone nor a zombie waiting for its parent).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether `pid` runs an executable that was replaced by the one we run from: the path it
/// was started from now holds our file (`install` puts a new file, with a new inode, there).
fn replaced_by_us(pid: u32) -> std::io::Result<bool> {
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let running = std::fs::metadata(&link)?;
    let target = std::fs::read_link(&link)?;
    let target = target.to_string_lossy();
    let started_from = Path::new(target.strip_suffix(" (deleted)").unwrap_or(&target));
    let ours = std::env::current_exe()?;
    let mine = std::fs::metadata(&ours)?;
    Ok(started_from == ours && (running.dev(), running.ino()) != (mine.dev(), mine.ino()))
}

/// The file the autolb answering on the admin port serves (its `source`, resolved against
/// its working directory when relative), which must be `ours`: the same file (device and
/// inode), whatever the path (a symlink, a hard link, a relative path).
fn same_config(ours: &Path, theirs: &Path, pid: u32, addr: SocketAddr) -> anyhow::Result<PathBuf> {
    let theirs = if theirs.is_relative() {
        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd.join(theirs),
            Err(_) => return Ok(ours.to_path_buf()),
        }
    } else {
        theirs.to_path_buf()
    };
    let (Ok(a), Ok(b)) = (std::fs::metadata(ours), std::fs::metadata(&theirs)) else {
        return Ok(ours.to_path_buf());
    };
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        bail!(
            "the autolb answering at {addr} (pid {pid}) serves {}, not {}: nothing reloaded",
            theirs.display(),
            ours.display()
        );
    }
    Ok(theirs)
}

/// The admin API of the running autolb, as the config describes it.
struct Admin {
    addr: SocketAddr,
    token: Option<String>,
    timeout: Duration,
}

impl Admin {
    fn of(cfg: &Config, timeout: Duration) -> Admin {
        let mut addr = cfg.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let token = cfg
            .admin
            .token_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .map(|t| t.trim().to_string());
        Admin {
            addr,
            token,
            timeout,
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request(Method::GET, path).await?;
        if status != StatusCode::OK {
            bail!("GET {path} at {} answered {status}: {body}", self.addr);
        }
        Ok(body)
    }

    /// One request on a fresh connection; the body as JSON (a string if it is not JSON).
    async fn request(&self, method: Method, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let what = format!("{method} {path} at {}", self.addr);
        tokio::time::timeout(self.timeout, self.exchange(method, path))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))
            .and_then(|r| r)
            .with_context(|| format!("{what} (the running autolb's admin API)"))
    }

    async fn exchange(&self, method: Method, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let post = method == Method::POST;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if post {
            req = req.header(header::CONTENT_TYPE, "application/json");
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
        }
        let body = if post {
            Bytes::from_static(b"{}")
        } else {
            Bytes::new()
        };
        let resp = sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).trim().to_string()));
        Ok((status, value))
    }
}
