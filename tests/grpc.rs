//! gRPC through autolb (h2c listener, `protocol: h2` pool), with real gRPC stacks: tonic
//! clients and servers, and Python grpcio (gRPC's C core, which refuses a call whose
//! `te: trailers` a proxy dropped). Unary, server, client and bidirectional streaming;
//! trailers and status details; deadlines (`grpc-timeout`) and streams against
//! `timeouts.response`.

mod common;
mod grpc_support;

use std::process::Stdio;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

use common::{backend_list, Autolb, Proc};
use grpc_support::{msg, Client, Msg};

/// autolb with an h2c listener `web` in front of pool `web` (`protocol: h2`) of `backends`,
/// with `pool_extra` lines in the pool.
fn start(backends: &[std::net::SocketAddr], pool_extra: &str) -> Autolb {
    let list = backend_list(backends, "");
    Autolb::start(&common::config(
        2,
        ", h2c: true",
        &format!("pools:\n  web:\n    protocol: h2\n{pool_extra}    backends:\n{list}"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_every_kind_pass_through_with_their_trailers() {
    let server = grpc_support::server("s1").await;
    let lb = start(&[server.addr], "");
    let mut c = Client::connect(lb.addr("web")).await;

    // Unary: the answer, its header metadata, and what the backend saw of the request.
    let mut req = Request::new(msg("hi"));
    req.metadata_mut()
        .insert("x-client", MetadataValue::from_static("rust"));
    let resp = c.unary(req).await.expect("unary call");
    assert_eq!(resp.get_ref().text, "echo:hi");
    let md = resp.metadata();
    assert_eq!(md.get("x-server").expect("x-server"), "s1");
    assert_eq!(md.get("x-client-echo").expect("metadata through"), "rust");
    assert_eq!(
        md.get("x-te").expect("the backend saw a te header"),
        "trailers"
    );

    // A failed unary call: its code, message and trailing metadata.
    let status = c.unary(Request::new(msg("fail"))).await.expect_err("fails");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing");
    assert_eq!(status.metadata().get("x-why").expect("x-why"), "test");

    // Server streaming: every message, then the OK trailers.
    let m = Msg {
        text: "s".into(),
        count: 5,
        delay_ms: 20,
    };
    let mut stream = c
        .stream(Request::new(m))
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.expect("stream message") {
        got.push(m.text);
    }
    assert_eq!(got, ["s-0", "s-1", "s-2", "s-3", "s-4"]);
    let trailers = stream.trailers().await.expect("trailers");
    assert!(trailers.is_some(), "the OK status came in trailers");

    // A stream that fails after its messages: the status and metadata in its trailers.
    let m = Msg {
        text: "fail".into(),
        count: 2,
        delay_ms: 0,
    };
    let mut stream = c
        .stream(Request::new(m))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        stream.message().await.expect("first").expect("some").text,
        "fail-0"
    );
    assert_eq!(
        stream.message().await.expect("second").expect("some").text,
        "fail-1"
    );
    let status = stream
        .message()
        .await
        .expect_err("the stream's end is an error");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "stopped late");
    assert_eq!(status.metadata().get("x-why").expect("x-why"), "late");

    // Client streaming.
    let texts = tokio_stream::iter(["a", "b", "c"].map(msg));
    let resp = c.collect(Request::new(texts)).await.expect("client stream");
    assert_eq!(resp.get_ref().text, "a+b+c");

    // Bidirectional: each answer arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(msg("one")).await.expect("send");
    let mut answers = c
        .chat(Request::new(outbound))
        .await
        .expect("chat")
        .into_inner();
    for next in ["two", "three"] {
        let a = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("an answer while the call is open")
            .expect("message")
            .expect("some");
        assert!(a.text.starts_with("re:"), "{a:?}");
        tx.send(msg(next)).await.expect("send");
    }
    let last = answers.message().await.expect("message").expect("some");
    assert_eq!(last.text, "re:three");
    drop(tx);
    assert!(answers.message().await.expect("clean end").is_none());
    assert_eq!(server.calls.load(std::sync::atomic::Ordering::SeqCst), 6);
}

/// A grpcio server's port (it prints it first).
fn grpcio_server(name: &str) -> (std::net::SocketAddr, Proc) {
    let script = grpc_support::python_dir().join("grpcio_server.py");
    let mut child = common::command("python3")
        .arg(script)
        .arg(name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let log = common::collect(stderr);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the grpcio server printed its port");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("grpcio server: {line:?}; {}", log.lock().expect("log")));
    (
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Proc { child, log },
    )
}

/// The issue's report: a grpcio client through autolb to a grpcio server. gRPC's C core
/// resets a call that lost its `te: trailers` (INTERNAL_ERROR, then a 502 from autolb).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_core_client_and_server_talk_through_autolb() {
    if !grpc_support::grpcio_or_skip("grpc_core_client_and_server_talk_through_autolb") {
        return;
    }
    let (backend, _server) = grpcio_server("core");
    let lb = start(&[backend], "");
    let script = grpc_support::python_dir().join("grpcio_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(lb.addr("web").to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio client finished within 60 s")
    .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "client output {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let hello = "0a0568656c6c6f";
    assert_eq!(got["unary"], hello, "{got}\nautolb log:\n{}", lb.proc.log());
    assert_eq!(got["trailers"]["x-trail"], "t-core", "{got}");
    assert_eq!(
        got["stream"],
        serde_json::json!([hello, hello, hello]),
        "{got}"
    );
    assert_eq!(got["chat"], serde_json::json!([hello, hello]), "{got}");
}

/// A tonic client to a grpcio server: the C core checks the `te` autolb forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_core_server_accepts_what_autolb_forwards() {
    if !grpc_support::grpcio_or_skip("a_grpc_core_server_accepts_what_autolb_forwards") {
        return;
    }
    let (backend, _server) = grpcio_server("core");
    let lb = start(&[backend], "");
    let mut c = Client::connect(lb.addr("web")).await;
    let resp = c
        .unary(Request::new(msg("hello")))
        .await
        .expect("unary call");
    assert_eq!(resp.get_ref().text, "hello");
    assert_eq!(resp.metadata().get("x-trail").expect("trailer"), "t-core");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_decide_how_long_a_call_waits() {
    let server = grpc_support::server("s1").await;
    // timeouts.response far shorter than what the calls take.
    let lb = start(
        &[server.addr],
        "    retries: 0\n    timeouts: { response: 300ms }\n",
    );
    let addr = lb.addr("web");
    let mut c = Client::connect(addr).await;

    // A deadline of 20 s allows a 1 s answer: timeouts.response does not cut it.
    let mut req = Request::new(Msg {
        text: "slow".into(),
        delay_ms: 1000,
        count: 0,
    });
    req.set_timeout(Duration::from_secs(20));
    let resp = c.unary(req).await.expect("a call its deadline allows");
    assert_eq!(resp.get_ref().text, "echo:slow");

    // An expired deadline: autolb answers DEADLINE_EXCEEDED itself, as gRPC (HTTP 200).
    let slow = Msg {
        text: "slow".into(),
        delay_ms: 10_000,
        count: 0,
    };
    let r =
        grpc_support::raw_call(addr, "/test.Echo/Unary", &slow, &[("grpc-timeout", "500m")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.grpc_status().as_deref(), Some("4"), "{r:?}");
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert!(r.body.is_empty(), "{r:?}");

    // Without a deadline, timeouts.response holds: DEADLINE_EXCEEDED after it.
    let r = grpc_support::raw_call(addr, "/test.Echo/Unary", &slow, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.grpc_status().as_deref(), Some("4"), "{r:?}");
    assert_eq!(
        r.grpc_message().as_deref(),
        Some("backend timed out"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_flow_outlast_the_response_timeout() {
    let server = grpc_support::server("s1").await;
    let lb = start(
        &[server.addr],
        "    retries: 0\n    timeouts: { response: 1s, idle: 1s }\n",
    );
    let mut c = Client::connect(lb.addr("web")).await;

    // A client stream of 2.4 s, a message every 200 ms, answered at its end: the wait for
    // the answer restarts while the stream flows.
    let texts = tokio_stream::iter(0..12).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        msg(&i.to_string())
    });
    let resp = c
        .collect(Request::new(texts))
        .await
        .expect("a flowing client stream");
    assert_eq!(resp.get_ref().text, "0+1+2+3+4+5+6+7+8+9+10+11");

    // A server stream of 2.4 s, a message every 200 ms.
    let m = Msg {
        text: "t".into(),
        count: 12,
        delay_ms: 200,
    };
    let mut stream = c
        .stream(Request::new(m))
        .await
        .expect("stream")
        .into_inner();
    let mut n = 0;
    while let Some(_m) = stream.message().await.expect("a flowing server stream") {
        n += 1;
    }
    assert_eq!(n, 12);
}

/// TLS both ways: an https listener (ALPN h2) and a pool of TLS gRPC backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tls_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::tls::TestCa::new("gRPC test CA");
    let front = ca.issue(&["grpc.test"]);
    let (cert, key) = front.write(dir.path(), "front");
    let backend_cert = ca.issue(&["backend.test"]);
    let ca_file = ca.write(dir.path(), "ca");
    let server =
        grpc_support::server_with("tls", Some((&backend_cert.cert_pem, &backend_cert.key_pem)))
            .await;
    let lb = Autolb::start(&format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: secure
    listen: \"127.0.0.1:0\"
    protocol: https
    pool: web
    tls:
      certificates: [{{ cert: {cert:?}, key: {key:?} }}]
pools:
  web:
    protocol: h2
    tls: {{ sni: backend.test, ca: {ca_file:?} }}
    health_check: {{ type: grpc, interval: 200ms, timeout: 200ms, rise: 1 }}
    backends: [{{ address: \"{}\" }}]
",
        server.addr
    ));
    let mut c = Client::connect_tls(lb.addr("secure"), "grpc.test", &ca.pem).await;
    let resp = c
        .unary(Request::new(msg("tls")))
        .await
        .expect("unary over TLS");
    assert_eq!(resp.get_ref().text, "echo:tls");
    assert_eq!(resp.metadata().get("x-te").expect("te"), "trailers");
    let m = Msg {
        text: "t".into(),
        count: 3,
        delay_ms: 0,
    };
    let mut stream = c
        .stream(Request::new(m))
        .await
        .expect("stream")
        .into_inner();
    let mut n = 0;
    while stream.message().await.expect("message").is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let texts = tokio_stream::iter(["x", "y"].map(msg));
    let resp = c.collect(Request::new(texts)).await.expect("client stream");
    assert_eq!(resp.get_ref().text, "x+y");
    // The gRPC health check over the pool's TLS passes.
    common::wait_until(20, "the TLS backend up", || async {
        let s = common::get(lb.admin, "/loadbalancer/status").await.json();
        let b = &s["pools"][0]["backends"][0];
        (b["health"] == "up" && b["check"]["detail"] == "SERVING").then_some(())
    })
    .await;
}
