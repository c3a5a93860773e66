//! A gRPC backend for `bench/run`'s grpc scenario: the tests' `test.Echo` tonic server
//! (tests/grpc_support) on a given port, h2c, until killed.
//!
//! ```text
//! cargo run --release --example grpc_echo -- --port 50051 --name g1
//! ```

#[path = "../tests/grpc_support/mod.rs"]
mod grpc_support;

fn usage() -> ! {
    eprintln!("usage: grpc_echo --port PORT [--name NAME]");
    std::process::exit(2);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut port: Option<u16> = None;
    let mut name = String::from("grpc");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()),
            "--name" => name = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let Some(port) = port else { usage() };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("grpc_echo: 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let name: &'static str = Box::leak(name.into_boxed_str());
    let _server = grpc_support::serve(listener, name, None);
    eprintln!("grpc_echo {name} listening on 127.0.0.1:{port}");
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
