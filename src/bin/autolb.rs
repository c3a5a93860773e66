//! `autolb`: run the balancer (`autolb run -c FILE`, or `autolb -c FILE`) or validate a
//! config (`autolb check -c FILE`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use autolb::config;
use autolb::server::{upgrade, Drain, Server};

const USAGE: &str = "usage:
  autolb run -c FILE             run the balancer (also: autolb -c FILE)
  autolb run --upgrade -c FILE   zero-downtime restart: take over the listening sockets of
                                 the autolb running FILE, then let it drain and exit
  autolb check -c FILE           validate FILE; print each error as FILE:LINE:COL: message
  autolb --version";

enum Command {
    Run { path: PathBuf, upgrade: bool },
    Check(PathBuf),
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut words = args.iter().map(String::as_str).peekable();
    let check = match words.peek() {
        Some(&"check") => {
            words.next();
            true
        }
        Some(&"run") => {
            words.next();
            false
        }
        _ => false,
    };
    let mut path = None;
    let mut upgrade = false;
    while let Some(w) = words.next() {
        match w {
            "-c" | "--config" => {
                path = Some(PathBuf::from(words.next().ok_or("-c needs a FILE")?));
            }
            "--upgrade" if !check => upgrade = true,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let path = path.ok_or("missing -c FILE")?;
    Ok(if check {
        Command::Check(path)
    } else {
        Command::Run { path, upgrade }
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("autolb {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("autolb: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Check(path) => check(&path),
        Command::Run { path, upgrade } => {
            init_logging();
            match run(&path, upgrade) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("{w}");
            }
            let backends: usize = cfg.pools.iter().map(|p| p.backends.len()).sum();
            println!(
                "{}: ok: {} listener(s), {} route(s), {} pool(s), {} backend(s)",
                path.display(),
                cfg.listeners.len(),
                cfg.routes.len(),
                cfg.pools.len(),
                backends
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: text, or one JSON object per line with `AUTOLB_LOG_FORMAT=json` (for
/// Loki, ELK, journald's JSON collectors).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTOLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("AUTOLB_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn run(path: &std::path::Path, upgrade: bool) -> anyhow::Result<ExitCode> {
    let cfg = match config::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the main runtime")?;
    rt.block_on(async {
        let socket = upgrade::socket_path(path);
        let server = if upgrade {
            let from = socket.clone();
            let (sockets, predecessor) =
                tokio::task::spawn_blocking(move || upgrade::take_over(&from)).await??;
            let server = Server::start_with(cfg, Some(sockets)).await?;
            server.wait_until_serving(Duration::from_secs(30)).await;
            upgrade::ready(predecessor).context("cannot tell the old process to drain")?;
            tracing::info!("upgrade: serving; the previous process drains");
            server
        } else {
            Server::start(cfg).await?
        };
        // Wait for a successor (`autolb run --upgrade`) on a blocking thread.
        let (handed_tx, handed_rx) = tokio::sync::oneshot::channel();
        let wait_socket = socket.clone();
        let running = server.running.clone();
        std::thread::Builder::new()
            .name("autolb-upgrade".into())
            .spawn(move || {
                // The predecessor may still hold the path for a moment after READY.
                std::thread::sleep(Duration::from_millis(if upgrade { 200 } else { 0 }));
                let sockets = || running.handover();
                if let Err(e) = upgrade::hand_over(&wait_socket, &sockets, Duration::from_secs(60))
                {
                    tracing::warn!(error = %e, "zero-downtime restart unavailable");
                    return;
                }
                let _ = handed_tx.send(());
            })
            .context("cannot start the upgrade thread")?;
        let handed_over = wait_for_signals(&server, handed_rx).await?;
        if handed_over {
            // The successor answers on the admin socket from now on.
            server.stop_admin();
        }
        let grace = server.runtime.snapshot().config.shutdown_grace;
        let drain = if handed_over {
            Drain::Handover
        } else {
            Drain::Stop
        };
        server.shutdown(drain, grace).await;
        if !handed_over {
            let _ = std::fs::remove_file(&socket);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Run until SIGTERM or SIGINT; SIGHUP, the config file watcher and `POST /config/reload`
/// all reload through `Server::reload`.
async fn wait_for_signals(
    server: &Server,
    mut handed_over: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<bool> {
    use autolb::server::reload::Trigger;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut requests = server.reload_requests();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); return Ok(false); }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); return Ok(false); }
            Ok(()) = &mut handed_over => {
                tracing::info!("upgrade: the new process serves; draining");
                return Ok(true);
            }
            _ = hup.recv() => { server.reload(Trigger::Signal); }
            Some(req) = async {
                match requests.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // An unchanged file (an editor touching it) is not a reload.
                if req.trigger == Trigger::File
                    && autolb::server::reload::file_hash(&server.runtime.snapshot().config.source)
                        == server.config_hash()
                {
                    continue;
                }
                let outcome = server.reload(req.trigger);
                if let Some(reply) = req.reply {
                    let _ = reply.send(outcome);
                }
            }
        }
    }
}
