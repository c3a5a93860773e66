//! HTTP/2 connections to a backend (`protocol: h2`) past the backend's
//! SETTINGS_MAX_CONCURRENT_STREAMS: autolb opens another connection once the ones it has
//! carry as many streams as the backend allows, instead of queueing calls on the first, and
//! closes the extra ones after the pool's idle timeout. Real tonic client and server; the
//! server counts the connections it accepts.

mod common;
mod grpc_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::Request;

use common::{backend_list, Autolb};
use grpc_support::{msg, Client, Msg};

/// The backend's stream limit per connection, and the calls sent at once.
const MAX_STREAMS: u32 = 4;
const CALLS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_once_the_backend_stream_limit_is_reached() {
    let (server, conns) = grpc_support::server_limited("s1", MAX_STREAMS).await;
    // One worker: its connections to the backend are all the backend sees.
    let list = backend_list(&[server.addr], "");
    let lb = Autolb::start(&common::config(
        1,
        ", h2c: true",
        &format!(
            "pools:\n  web:\n    protocol: h2\n    timeouts: {{ idle: 1s, response: 30s }}\n    backends:\n{list}"
        ),
    ));
    let client = Client::connect(lb.addr("web")).await;

    // Every call waits on the backend long enough for all of them to be in flight together
    // (the calls go out at once; a second is far more than their start takes).
    let calls = (0..CALLS).map(|i| {
        let mut c = client.clone();
        tokio::spawn(async move {
            let m = Msg {
                text: format!("c{i}"),
                delay_ms: 1000,
                ..Msg::default()
            };
            c.unary(Request::new(m)).await
        })
    });
    let calls: Vec<_> = calls.collect();
    for (i, call) in calls.into_iter().enumerate() {
        let resp = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call ends within a minute")
            .expect("call task");
        let resp = resp.unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        assert_eq!(resp.get_ref().text, format!("echo:c{i}"));
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), CALLS as usize);

    // More than one connection (today's queueing on one fails here), and never more than
    // the calls in flight need: one opened at a time, each filled before the next.
    let accepted = conns.accepted.load(Ordering::SeqCst);
    let needed = CALLS.div_ceil(MAX_STREAMS) as usize;
    eprintln!("{CALLS} calls at once: {accepted} backend connections (at most {needed} needed)");
    assert!(
        accepted > 1,
        "all {CALLS} calls went over {accepted} connection(s) to a backend allowing {MAX_STREAMS} streams each"
    );
    assert!(
        accepted <= needed,
        "{accepted} connections for {CALLS} calls of at most {MAX_STREAMS} streams each (at most {needed} needed)"
    );

    // Once the burst is over, calls one at a time need one connection: the others are
    // closed after the pool's idle timeout (1 s).
    let mut c = client.clone();
    common::wait_until(30, "the extra backend connections to close", || {
        let mut c = c.clone();
        let conns = conns.clone();
        async move {
            let resp = c.unary(Request::new(msg("after"))).await.expect("call");
            assert_eq!(resp.get_ref().text, "echo:after");
            (conns.open.load(Ordering::SeqCst) == 1).then_some(())
        }
    })
    .await;
    let resp = c.unary(Request::new(msg("last"))).await.expect("call");
    assert_eq!(resp.get_ref().text, "echo:last");
    assert_eq!(conns.open.load(Ordering::SeqCst), 1);
    assert_eq!(
        conns.accepted.load(Ordering::SeqCst),
        accepted,
        "calls one at a time open no new connection"
    );
}
