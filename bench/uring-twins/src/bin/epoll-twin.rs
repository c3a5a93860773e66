//! `epoll-twin`: the shared proxy (`uring_twins::proxy`) on tokio current_thread (epoll), one thread.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match uring_twins::args::Args::from_env() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("epoll-twin: {e}");
            return ExitCode::from(2);
        }
    };
    match uring_twins::rt_tokio::run(args.listen, args.backends) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("epoll-twin: {e}");
            ExitCode::FAILURE
        }
    }
}
