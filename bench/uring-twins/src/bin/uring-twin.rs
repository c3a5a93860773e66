//! `uring-twin`: the shared proxy (`uring_twins::proxy`) on monoio's io_uring driver, one thread.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match uring_twins::args::Args::from_env() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uring-twin: {e}");
            return ExitCode::from(2);
        }
    };
    match uring_twins::rt_monoio::run(args.listen, args.backends) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring-twin: {e}");
            ExitCode::FAILURE
        }
    }
}
