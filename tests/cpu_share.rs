//! A worker's CPU sharing (src/server/cpu_share.rs) through the real program: the yielder
//! wakes under load, and once the load stops the worker sleeps again: no spinning.

mod common;

use std::time::Duration;

use common::{echo, Autolb, Client};

/// CPU time (ns) of autolb's data-plane worker threads.
fn workers_cpu_ns(pid: u32) -> u64 {
    let mut cpu_ns = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("autolb-worker") {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).expect("schedstat");
        cpu_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("cpu ns");
    }
    cpu_ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sleeps_when_the_load_stops() {
    let backend = echo("b1");
    let list = common::backend_list(&[backend.addr], "");
    let lb = Autolb::start(&common::config(
        1,
        "",
        &format!("pools:\n  web:\n    backends:\n{list}"),
    ));
    let addr = lb.addr("web");

    // 16 keep-alive clients, 250 requests each: the yielder is woken many times over.
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            for _ in 0..250 {
                assert_eq!(client.get("/").await.status, 200);
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }

    // Idle now. A yielder that kept itself ready would keep the worker busy (about a
    // second of CPU per second) and never let it sleep in epoll_wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu0 = workers_cpu_ns(lb.proc.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu1 = workers_cpu_ns(lb.proc.pid());
    let idle_ms = (cpu1 - cpu0) / 1_000_000;
    assert!(
        idle_ms < 100,
        "the idle worker used {idle_ms} ms of CPU in 1 s"
    );

    assert_eq!(
        common::get(addr, "/").await.status,
        200,
        "and it wakes for the next"
    );
}
