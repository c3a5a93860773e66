//! TLS session resumption across nodes: with `tls.session_tickets.shared` and a Redis state
//! backend (a real redis-server), a ticket issued by one autolb resumes a session on
//! another (rustls client, one session store for both connections); without sharing, a
//! node resumes only its own tickets.

mod common;

use std::net::SocketAddr;

use common::redis::Redis;
use common::tls::{self as t, TestCa};
use common::Autolb;
use rustls::HandshakeKind;
use tokio_rustls::TlsConnector;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn node(
    pair: &(std::path::PathBuf, std::path::PathBuf),
    backend: SocketAddr,
    redis: Option<&Redis>,
) -> Autolb {
    let (tls_extra, state) = match redis {
        Some(r) => (
            "      session_tickets: { shared: true }\n",
            format!(
                "state:\n  backend: redis\n  redis: {{ url: \"{}\" }}\n",
                r.url()
            ),
        ),
        None => ("", String::new()),
    };
    let yaml = t::https_config(
        std::slice::from_ref(pair),
        tls_extra,
        "",
        &state,
        &[backend],
    );
    Autolb::start_with_env(&yaml, &[("AUTOLB_ACME_KEY", KEY)])
}

/// A TLS connection to `addr` and one request on it (so the client reads the tickets the
/// server sent after the handshake); how the handshake went.
async fn visit(addr: SocketAddr, connector: &TlsConnector) -> HandshakeKind {
    let stream = t::connect(addr, "a.test", connector)
        .await
        .expect("TLS handshake");
    let kind = stream.get_ref().1.handshake_kind().expect("handshake done");
    let mut tx = t::h1(stream).await;
    assert_eq!(t::get1(&mut tx, "a.test", "/").await.status, 200);
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_node_resumes_on_the_other() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("tickets CA");
    let pair = ca.issue(&["a.test"]).write(dir.path(), "a");
    let echo = common::echo("e1");
    let a = node(&pair, echo.addr, Some(&redis));
    let b = node(&pair, echo.addr, Some(&redis));
    // One session store for every connection of this client.
    let connector = t::connector(&ca, &[], false);
    // The nodes take the fleet's key within a few seconds of starting.
    common::wait_until(30, "a resumption on the other node", || async {
        visit(a.addr("secure"), &connector).await;
        (visit(b.addr("secure"), &connector).await == HandshakeKind::Resumed).then_some(())
    })
    .await;
    // And the other way round.
    visit(b.addr("secure"), &connector).await;
    assert_eq!(
        visit(a.addr("secure"), &connector).await,
        HandshakeKind::Resumed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sharing_a_node_resumes_only_its_own_tickets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("tickets CA");
    let pair = ca.issue(&["a.test"]).write(dir.path(), "a");
    let echo = common::echo("e1");
    let a = node(&pair, echo.addr, None);
    let b = node(&pair, echo.addr, None);
    let connector = t::connector(&ca, &[], false);
    assert_eq!(
        visit(a.addr("secure"), &connector).await,
        HandshakeKind::Full
    );
    assert_eq!(
        visit(a.addr("secure"), &connector).await,
        HandshakeKind::Resumed,
        "the same node resumes its ticket"
    );
    assert_eq!(
        visit(b.addr("secure"), &connector).await,
        HandshakeKind::Full,
        "another node's ticket does not open"
    );
}
