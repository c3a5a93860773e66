//! `autolb run -c FILE [--upgrade]`: serve FILE until SIGTERM; reload on SIGHUP, on a
//! change to the file and on `POST /config/reload`; hand the listening sockets to a
//! successor (`run --upgrade`) that asks for them.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use autolb::server::{upgrade, Drain, Server};

use crate::notify::Notifier;
use crate::{report, RunArgs};

pub fn main(args: RunArgs) -> ExitCode {
    // Before any thread starts: NOTIFY_SOCKET leaves the environment here.
    let notifier = Notifier::take_from_env();
    init_logging();
    let path = args.config.unwrap_or_default();
    let socket = args
        .upgrade_socket
        .unwrap_or_else(|| upgrade::socket_path(&path));
    match run(&path, &socket, args.upgrade, notifier.as_ref()) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", report(&e));
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

fn run(
    path: &Path,
    socket: &Path,
    upgrade: bool,
    notifier: Option<&Notifier>,
) -> anyhow::Result<ExitCode> {
    let cfg = match autolb::tls::config_files::load(path) {
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
    // Before anything is bound: a token variable the config names must be set.
    let tokens = autolb::admin::Tokens::from_env(&cfg.admin)?;
    rt.block_on(async {
        let server = if upgrade {
            let from = socket.to_path_buf();
            let (sockets, predecessor) =
                tokio::task::spawn_blocking(move || upgrade::take_over(&from)).await??;
            let server = Server::start_with(cfg, Some(sockets)).await?;
            autolb::admin::start(&server, tokens);
            server.wait_until_serving(Duration::from_secs(30)).await;
            if let Some(n) = notifier {
                // systemd must follow this process before the old one exits.
                n.send(&format!("MAINPID={}\n", std::process::id()));
                if let Err(e) = n.barrier(Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "upgrade: systemd may not know the new main PID yet");
                }
            }
            upgrade::ready(predecessor).context("cannot tell the old process to drain")?;
            tracing::info!("upgrade: serving; the previous process drains");
            server
        } else {
            let server = Server::start(cfg).await?;
            autolb::admin::start(&server, tokens);
            if let Some(n) = notifier {
                n.send("READY=1\n");
            }
            server
        };
        // Wait for a successor (`autolb run --upgrade`) on a blocking thread.
        let (handed_tx, handed_rx) = tokio::sync::oneshot::channel();
        let wait_socket = socket.to_path_buf();
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
        } else if let Some(n) = notifier {
            n.send("STOPPING=1\n");
        }
        let grace = server.runtime.snapshot().config.shutdown_grace;
        let drain = if handed_over {
            Drain::Handover
        } else {
            Drain::Stop
        };
        server.shutdown(drain, grace).await;
        if !handed_over {
            let _ = std::fs::remove_file(socket);
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
