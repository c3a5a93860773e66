mod common;
use common::*;
#[tokio::test]
async fn mem() {
    let e = echo("m");
    let lb = Autolb::start(&config(2, "", &format!("pools:\n  web:\n    backends:\n{}", backend_list(&[e.addr], ""))));
    let addr = lb.addr("web");
    let (mut w, _) = ws_connect(addr, "/ws", &[]).await;
    ws_text(&mut w).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = lb.rss_kib();
    let mut v = Vec::new();
    for chunk in 0..5000 {
        let tasks: Vec<_> = (0..1).map(|_| tokio::spawn(async move { let (mut ws, _) = ws_connect(addr, "/ws", &[]).await; ws_text(&mut ws).await; ws })).collect();
        for t in tasks { v.push(t.await.unwrap()); }
        let _ = chunk;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let after = lb.rss_kib();
    println!("MEM before={before} KiB after={after} KiB per_ws={} bytes", (after - before) * 1024 / 5000);
}
