//! L4 end to end through a real autolb: tcp listeners (round robin, least_conn, half-close,
//! a killed backend, redis-cli to a real redis-server), PROXY protocol out (v1, v2, also from
//! an http pool) and in (`accept_proxy`, seen in X-Forwarded-For; malformed refused), and TLS
//! passthrough by SNI with the backend's certificate seen by the client.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::tls::{connect, connector, get1, h1, presented, tls_backend, TestCa};
use common::{command, echo, get, Autolb, Proc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);

/// A TCP server that greets with `NAME\n`, then echoes; aborting the handle closes its port.
async fn named_echo(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

fn tcp_config(
    balance: &str,
    backends: &[SocketAddr],
    pool_extra: &str,
    listener_extra: &str,
) -> String {
    let list: String = backends
        .iter()
        .map(|a| format!("      - {{ address: \"{a}\" }}\n"))
        .collect();
    format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: db, listen: \"127.0.0.1:0\", protocol: tcp, pool: db{listener_extra} }}
pools:
  db:
    balance: {balance}
    timeouts: {{ connect: 1s, idle: 20s }}
{pool_extra}    backends:
{list}"
    )
}

/// Connect through autolb and read the backend's greeting.
async fn greet(addr: SocketAddr) -> (String, TcpStream) {
    let mut s = tokio::time::timeout(T, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        let n = tokio::time::timeout(T, s.read(&mut b))
            .await
            .expect("greeting in time")
            .expect("read");
        assert_eq!(n, 1, "closed before the greeting");
        line.push(b[0]);
    }
    (String::from_utf8_lossy(&line).trim().to_string(), s)
}

async fn status(lb: &Autolb) -> serde_json::Value {
    get(lb.admin, "/loadbalancer/status").await.json()
}

#[tokio::test]
async fn round_robin_echo_and_metrics() {
    let (a, _ta) = named_echo("a").await;
    let (b, _tb) = named_echo("b").await;
    let lb = Autolb::start(&tcp_config("round_robin", &[a, b], "", ""));
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, mut s) = greet(lb.addr("db")).await;
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&buf, b"ping");
        names.push(name);
    }
    assert_ne!(names[0], names[1], "{names:?}");
    assert_eq!(names[0], names[2], "{names:?}");
    assert_eq!(names[1], names[3], "{names:?}");
    let metrics = get(lb.admin, "/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("autolb_tcp_bytes_total{listener=\"db\",direction=\"in\"}"))
        .expect("tcp bytes metric");
    let n: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(n >= 16, "{line}");
    assert!(metrics.contains("autolb_tcp_connections_total{pool=\"db\""));
}

#[tokio::test]
async fn least_conn_counts_open_connections() {
    let (a, _ta) = named_echo("a").await;
    let (b, _tb) = named_echo("b").await;
    let lb = Autolb::start(&tcp_config("least_conn", &[a, b], "", ""));
    let (first, _c1) = greet(lb.addr("db")).await;
    let (second, _c2) = greet(lb.addr("db")).await;
    assert_ne!(
        first, second,
        "the second connection goes to the idle backend"
    );
    let (third, _c3) = greet(lb.addr("db")).await;
    let (fourth, _c4) = greet(lb.addr("db")).await;
    assert_ne!(third, fourth, "after a tie, the less loaded backend");
    let st = status(&lb).await;
    let pool = &st["pools"][0];
    assert_eq!(pool["tcp"]["open_connections"], 4, "{pool}");
    for backend in pool["backends"].as_array().expect("backends") {
        assert_eq!(backend["tcp"]["open_connections"], 2, "{backend}");
        assert_eq!(backend["active_requests"], 2, "{backend}");
    }
}

#[tokio::test]
async fn max_connections_moves_on_then_refuses() {
    let (a, _ta) = named_echo("a").await;
    let (b, _tb) = named_echo("b").await;
    let yaml = tcp_config("round_robin", &[a, b], "", "")
        .replace(
            &format!("\"{a}\" }}"),
            &format!("\"{a}\", max_connections: 1 }}"),
        )
        .replace(
            &format!("\"{b}\" }}"),
            &format!("\"{b}\", max_connections: 1 }}"),
        );
    let lb = Autolb::start(&yaml);
    let (n1, _c1) = greet(lb.addr("db")).await;
    let (n2, _c2) = greet(lb.addr("db")).await;
    assert_ne!(n1, n2);
    // Both full: the third connection is closed without reaching a backend.
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn half_close_keeps_the_other_direction() {
    // Reads everything until the client's FIN, then answers and closes.
    let backend = common::raw_backend(|mut s: TcpStream| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            let _ = s
                .write_all(format!("got {} bytes", all.len()).as_bytes())
                .await;
        }
    })
    .await;
    let lb = Autolb::start(&tcp_config("round_robin", &[backend], "", ""));
    let mut s = TcpStream::connect(lb.addr("db")).await.expect("connect");
    s.write_all(&[7u8; 100_000]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test]
async fn killed_backend_new_connections_go_elsewhere() {
    let (a, ta) = named_echo("a").await;
    let (b, _tb) = named_echo("b").await;
    let lb = Autolb::start(&tcp_config("round_robin", &[a, b], "", ""));
    ta.abort();
    let _ = ta.await;
    for _ in 0..6 {
        let (name, _s) = greet(lb.addr("db")).await;
        assert_eq!(name, "b");
    }
    let st = status(&lb).await;
    let dead = st["pools"][0]["backends"]
        .as_array()
        .and_then(|list| list.iter().find(|x| x["address"] == a.to_string()).cloned())
        .expect("backend a");
    assert!(dead["tcp"]["errors"].as_u64().unwrap_or(0) >= 1, "{dead}");
}

/// A backend answering with the PROXY header it received, read byte-exact: v1 up to its CRLF,
/// v2 as 16 bytes plus its length.
async fn proxy_echo() -> SocketAddr {
    common::raw_backend(|mut s: TcpStream| async move {
        let mut head = [0u8; 16];
        if s.read_exact(&mut head[..6]).await.is_err() {
            return;
        }
        let mut got = head[..6].to_vec();
        if &head[..6] == b"PROXY " {
            let mut b = [0u8; 1];
            while !got.ends_with(b"\r\n") && got.len() < 107 {
                if s.read_exact(&mut b).await.is_err() {
                    return;
                }
                got.push(b[0]);
            }
        } else {
            if s.read_exact(&mut head[6..]).await.is_err() {
                return;
            }
            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
            let mut rest = vec![0u8; len];
            if s.read_exact(&mut rest).await.is_err() {
                return;
            }
            got = [&head[..], &rest[..]].concat();
        }
        let _ = s.write_all(&got).await;
    })
    .await
}

#[tokio::test]
async fn send_proxy_v1_and_v2_to_tcp_backends() {
    let backend = proxy_echo().await;
    for version in ["v1", "v2"] {
        let lb = Autolb::start(&tcp_config(
            "round_robin",
            &[backend],
            &format!("    send_proxy: {version}\n"),
            "",
        ));
        let listen = lb.addr("db");
        let mut s = TcpStream::connect(listen).await.expect("connect");
        let me = s.local_addr().expect("local");
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .expect("header back in time")
            .expect("read");
        if version == "v1" {
            let expected = format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                me.port(),
                listen.port()
            );
            assert_eq!(String::from_utf8_lossy(&got), expected);
        } else {
            let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
            expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
            expected.extend_from_slice(&me.port().to_be_bytes());
            expected.extend_from_slice(&listen.port().to_be_bytes());
            assert_eq!(got, expected);
        }
    }
}

#[tokio::test]
async fn send_proxy_from_an_http_pool() {
    // Reads the PROXY line, then a request head, and answers with the PROXY line as body.
    let backend = common::raw_backend(|s: TcpStream| async move {
        let mut r = BufReader::new(s);
        let mut proxy = String::new();
        if r.read_line(&mut proxy).await.is_err() {
            return;
        }
        let mut line = String::new();
        while r.read_line(&mut line).await.is_ok_and(|n| n > 2) {
            line.clear();
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{proxy}",
            proxy.len()
        );
        let _ = r.get_mut().write_all(resp.as_bytes()).await;
    })
    .await;
    let yaml = common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    send_proxy: v1\n    backends:\n      - {{ address: \"{backend}\" }}\n"
        ),
    );
    let lb = Autolb::start(&yaml);
    let reply = get(lb.addr("web"), "/").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{}",
        reply.text()
    );
}

/// Send `head` then an HTTP request on a raw connection; the whole answer.
async fn raw_request(addr: SocketAddr, head: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head).await.expect("write header");
    // A refused header may get the connection reset before the request goes out: what
    // counts is the answer (none, for a refused one).
    let _ = s
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("answer in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn accept_proxy_feeds_x_forwarded_for_and_refuses_garbage() {
    let app = echo("app");
    let yaml = common::config(
        1,
        ", accept_proxy: true",
        &format!(
            "pools:\n  web:\n    backends:\n      - {{ address: \"{}\" }}\n",
            app.addr
        ),
    );
    let lb = Autolb::start(&yaml);
    let web = lb.addr("web");
    let v1 = raw_request(web, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n").await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert!(v1.contains("203.0.113.7"), "{v1}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    let src: std::net::Ipv6Addr = "2001:db8::42".parse().expect("ip");
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&[0x15, 0xb3, 0, 80]);
    let v2 = raw_request(web, &v2).await;
    assert!(v2.starts_with("HTTP/1.1 200"), "{v2}");
    assert!(v2.contains("2001:db8::42"), "{v2}");
    // No header, or a malformed one: closed without an answer, with a log line.
    assert_eq!(raw_request(web, b"").await, "");
    assert_eq!(
        raw_request(web, b"PROXY TCP4 1.2.3.4 nonsense\r\n").await,
        ""
    );
    assert!(
        lb.proc.log_shows("PROXY protocol header refused", T),
        "no log line:\n{}",
        lb.proc.log()
    );
}

#[tokio::test]
async fn tls_passthrough_by_sni() {
    let ca = TestCa::new("L4 test CA");
    let cert_a = ca.issue(&["a.example.com"]);
    let cert_b = ca.issue(&["*.b.example.com"]);
    let a = tls_backend("tls-a", &cert_a, None).await;
    let b = tls_backend("tls-b", &cert_b, None).await;
    let yaml = format!(
        "threads: 2
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - name: tls
    listen: \"127.0.0.1:0\"
    protocol: tcp
    sni_routes: {{ a.example.com: pa, \"*.b.example.com\": pb }}
pools:
  pa:
    backends: [{{ address: \"{a}\" }}]
  pb:
    backends: [{{ address: \"{b}\" }}]
"
    );
    let lb = Autolb::start(&yaml);
    let tls = connector(&ca, &[b"http/1.1"], false);
    for (sni, cert, name) in [
        ("a.example.com", &cert_a, "tls-a"),
        ("x.b.example.com", &cert_b, "tls-b"),
    ] {
        let stream = connect(lb.addr("tls"), sni, &tls).await.expect("handshake");
        assert_eq!(
            presented(&stream),
            cert.der,
            "{sni}: the backend's own certificate"
        );
        let mut tx = h1(stream).await;
        let reply = get1(&mut tx, sni, "/").await;
        assert_eq!(reply.headers["x-backend"], name, "{sni}");
    }
    // An unknown name and no default pool: closed.
    assert!(connect(lb.addr("tls"), "c.example.com", &tls)
        .await
        .is_err());
}

/// A `redis-server` on a free port, killed on drop.
fn redis_server() -> Option<(Proc, u16)> {
    let port = common::free_port();
    let child = command("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let proc = Proc {
        child,
        log: Default::default(),
    };
    common::wait_blocking(T.as_secs(), "redis-server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some((proc, port))
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = command("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn redis_cli_through_autolb() {
    let Some((_redis, port)) = redis_server() else {
        panic!("redis-server is not installed (.ci/run installs it)");
    };
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let lb = Autolb::start(&tcp_config(
        "consistent_hash",
        &[backend],
        "    health_check: { type: tcp, interval: 1s }\n",
        "",
    ));
    let addr = lb.addr("db");
    let cli = tokio::task::spawn_blocking(move || {
        assert_eq!(redis_cli(addr, &["PING"]), "PONG");
        assert_eq!(redis_cli(addr, &["SET", "l4:key", "through autolb"]), "OK");
        assert_eq!(redis_cli(addr, &["GET", "l4:key"]), "through autolb");
    });
    tokio::time::timeout(Duration::from_secs(30), cli)
        .await
        .expect("redis-cli in time")
        .expect("redis-cli asserts");
}

#[tokio::test]
async fn tcp_listener_added_by_reload() {
    let (a, _ta) = named_echo("a").await;
    let yaml = common::config(
        1,
        "",
        &format!("pools:\n  web:\n    backends:\n      - {{ address: \"{a}\" }}\n"),
    );
    let lb = Autolb::start(&yaml);
    let port = common::free_port();
    let next = yaml.replace(
        "listeners:\n",
        &format!(
            "listeners:\n  - {{ name: db, listen: \"127.0.0.1:{port}\", protocol: tcp, pool: web }}\n"
        ),
    );
    let tmp = lb.config.with_extension("tmp");
    std::fs::write(&tmp, next).expect("write");
    std::fs::rename(&tmp, &lb.config).expect("rename");
    let mut c = common::Client::connect(lb.admin).await;
    let req = http::Request::post("/config/reload")
        .header("content-type", "application/json")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = c.request(req).await;
    // The file watcher may have applied it first: either way the listener serves now.
    assert!(r.status < 300, "{} {}", r.status, r.text());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    common::wait_until_or(
        T.as_secs(),
        || async { TcpStream::connect(addr).await.ok() },
        || format!("listener db never served:\n{}", lb.proc.log()),
    )
    .await;
    let (name, _s) = greet(addr).await;
    assert_eq!(name, "a");
    assert!(
        lb.proc.log_shows("listener db now serves", T),
        "{}",
        lb.proc.log()
    );
}
