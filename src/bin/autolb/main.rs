//! `autolb`: the command line. `run` (also `autolb -c FILE`) serves a config, `check`
//! validates one, `reload` asks the running autolb to apply one (or to hand over to a new
//! binary), `version` says what was built.
#![forbid(unsafe_code)]

mod check;
mod notify;
mod reload;
mod run;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ENVIRONMENT: &str = "\
Environment:
  AUTOLB_LOG              autolb's log filter (stderr; default info), e.g. warn,autolb::autoscale=debug
  AUTOLB_LOG_FORMAT       json: autolb's log as one JSON object a line (default: text)
  AUTOLB_ADMIN_HOSTS      host names the admin API answers to besides IPs and localhost (comma-separated)
  AUTOLB_ADMIN_TOKEN      the admin bearer token, where admin.token_env names it (the shipped configs do)
  AUTOLB_READ_TOKEN       the admin read token, where admin.read_token_env names it; whatever
                          variables a config's *token_env settings name are read the same way
  AUTOLB_STICKY_SECRET    key signing sticky-session cookies (default: a public key, with a warning)
  AUTOLB_NODE_ID          this node's name in shared state (default HOSTNAME:ADMIN_PORT:PID)
  AUTOLB_ACME_KEY         32 bytes (base64 or hex) sealing ACME keys and certificates shared through
                          Redis (tls.acme with state.backend: redis; the same on every node)
  AUTOLB_UPGRADE_SOCKET   hand-over socket of zero-downtime upgrades (default: one per config file in
                          $RUNTIME_DIRECTORY when systemd sets it, else in the temp directory)
  AUTOLB_CPU_YIELD        off: a busy worker never gives its core away (default on)
  AUTOLB_WORKER_MODEL     shared: one work-stealing runtime instead of one per thread (for comparison)
  AUTOLB_L4_SPLICE        off: tcp listeners copy bytes through userspace instead of splice(2)
  AUTOLB_ACCEPT           tokio: register every new connection with epoll at once (for comparison)
  AUTOLB_UPSTREAM_CLIENT  hyper: send every backend request through hyper's client (for comparison)";

const RUN_EXAMPLES: &str = "\
Examples:
  autolb run -c /etc/autolb/autolb.yaml
  autolb -c conf/autolb.yaml                       # the same: run is the default command
  AUTOLB_LOG=debug autolb run -c conf/autolb.yaml
  autolb run --upgrade -c /etc/autolb/autolb.yaml  # take over from the autolb running that file

Signals: SIGHUP reloads the config, SIGUSR1 reopens the access log, SIGTERM and SIGINT drain
and exit. Under systemd (Type=notify) it reports READY=1 once serving.";

const CHECK_EXAMPLES: &str = "\
Examples:
  autolb check /etc/autolb/autolb.yaml
  autolb check -q -c /etc/autolb/autolb.yaml && systemctl reload autolb

Exit status: 0 valid, 1 any error (each printed as FILE:LINE:COL: message on stderr).
Besides the file itself it checks what `run` needs from this machine: the variable
admin.token_env names is set, every autoscale program is found (beside autolb or on PATH),
every certificate and key is readable by the current user.";

const RELOAD_EXAMPLES: &str = "\
Examples:
  autolb reload -c /etc/autolb/autolb.yaml       # what systemd's ExecReload= runs
  install -m 0755 new/autolb /usr/local/bin/autolb && autolb reload -c /etc/autolb/autolb.yaml
                                                 # zero-downtime upgrade to the new binary

It validates FILE first (as `autolb check` does); an invalid file is not sent. Then it asks
the autolb serving FILE (admin API at admin.listen, bearer token from admin.token_env) to
reload, and prints the changes or the errors. When that autolb's executable is no longer the
file `reload` runs from (a new binary was installed over it), it starts the new binary
instead (`autolb run --upgrade`), which takes over the listening sockets without refusing a
connection, and waits until the old process has drained and exited.
Exit status: 0 applied, 1 invalid file, refused or unreachable.";

#[derive(Parser)]
#[command(
    name = "autolb",
    version = autolb::build::LONG_VERSION,
    about = "A load balancer and reverse proxy with an embedded autoscaler",
    after_help = ENVIRONMENT,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `autolb -c FILE`: the same as `autolb run -c FILE`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer with a config file
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{ENVIRONMENT}"))]
    Run(RunArgs),
    /// Validate a config file: every error as FILE:LINE:COL: message
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Validate a config file, then have the running autolb apply it
    #[command(after_help = format!("{RELOAD_EXAMPLES}\n\n{ENVIRONMENT}"))]
    Reload(ReloadArgs),
    /// Print the version, git commit, build profile and rustc
    Version,
}

#[derive(Args)]
pub struct RunArgs {
    /// The config file
    #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// Zero-downtime restart: take over the listening sockets of the autolb running the
    /// same FILE, then let it drain and exit
    #[arg(long)]
    pub upgrade: bool,
    /// Where a running autolb waits for its successor (and where --upgrade finds it)
    #[arg(long, value_name = "PATH", env = "AUTOLB_UPGRADE_SOCKET")]
    pub upgrade_socket: Option<PathBuf>,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("file").required(true).args(["path", "config"]))]
struct CheckArgs {
    /// The config file
    #[arg(value_name = "FILE")]
    path: Option<PathBuf>,
    /// The config file (instead of the positional FILE)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print only errors: nothing on success, no warnings
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
pub struct ReloadArgs {
    /// The config file of the running autolb
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
    /// Start the binary `reload` runs from and hand over to it even if the running autolb
    /// already runs that file
    #[arg(long)]
    pub upgrade: bool,
    /// How long to wait for the running autolb (and, for an upgrade, for the old process
    /// to drain and exit)
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the running autolb waits for its successor (passed on to it)
    #[arg(long, value_name = "PATH", env = "AUTOLB_UPGRADE_SOCKET")]
    pub upgrade_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout, which may be closed (`autolb --help | head -1`):
            // clap reports that as an error we have nothing to do about.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Some(Command::Run(args)) => run::main(args),
        None => run::main(cli.run),
        Some(Command::Check(args)) => {
            let path = args.path.or(args.config).unwrap_or_default();
            check::main(&path, args.quiet)
        }
        Some(Command::Reload(args)) => reload::main(args),
        Some(Command::Version) => {
            out(format_args!("autolb {}", autolb::build::LONG_VERSION));
            ExitCode::SUCCESS
        }
    }
}

/// A line on stdout; a closed stdout (`autolb version | head -0`) is not an error.
pub fn out(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr (never fails either).
pub fn err(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// An error and its causes, each said once: `{:#}` repeats a cause whose text the message
/// already carries (`cannot bind 0.0.0.0:80: Address already in use (os error 98)` twice).
pub fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
