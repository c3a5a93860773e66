//! The dashboard in a real headless Chromium, beyond live data: the config view (hash,
//! generation, listeners -> routes -> pools, a refused reload with its errors), limits and
//! rate limits, the fleet, desired drawn above ready on the autoscaler's chart, backend
//! actions (drain, weight, maintenance, ready through `POST /backends/state` with the admin
//! token, asked for once), and a 400 px wide layout that does not overflow.

mod common;

use std::time::Duration;

use common::cdp::{find_chromium, Browser, Page};
use common::{backend_list, echo, Autolb, Client};

const TOKEN: &str = "admin-token-for-actions";

fn yaml(backends: &[std::net::SocketAddr]) -> String {
    let base = 27_000 + (std::process::id() % 100) as u16 * 20;
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\", token_env: T_ADMIN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web, rate_limit: {{ per_ip: 500, burst: 100 }} }}
routes:
  - {{ path_prefix: /api, pool: web, rate_limit: {{ per_ip: 50, burst: 10 }} }}
pools:
  web:
    balance: weighted_round_robin
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    limits: {{ max_inflight: 64, max_queue: 16, queue_timeout: 2s }}
    rate_limit: {{ rate: 1000, burst: 100 }}
    backends:
{list}  auto:
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 200ms, rise: 1 }}
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\", --name, \"{{instance}}\"]
      ports: {lo}-{hi}
      min: 1
      max: 3
      interval: 300ms
      target: {{ inflight_per_instance: 10 }}
",
        list = backend_list(backends, ""),
        echo = common::ECHO,
        lo = base,
        hi = base + 19,
    )
}

async fn status(lb: &Autolb) -> serde_json::Value {
    common::get(lb.admin, "/loadbalancer/status").await.json()
}

/// The state and weight of `backend` in pool web, as the API says.
async fn backend(lb: &Autolb, backend: std::net::SocketAddr) -> (String, u64) {
    let s = status(lb).await;
    let b = s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == backend.to_string())
        .cloned()
        .expect("the backend");
    (
        b["state"].as_str().unwrap_or_default().to_string(),
        b["weight"].as_u64().unwrap_or_default(),
    )
}

async fn click(page: &mut Page, selector: &str) {
    let js = format!(
        "(() => {{ const b = document.querySelector('{selector}'); if (!b || b.disabled) return false; b.click(); return true; }})()"
    );
    page.wait_for(&js, 20, &format!("click {selector}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_view_limits_fleet_actions_and_a_narrow_screen() {
    let Some(chromium) = find_chromium() else {
        skip_or_fail("no chromium binary (apt-get install chromium, or set AUTOLB_CHROMIUM)");
        return;
    };
    let browser = match Browser::launch(&chromium, 1400, 1200) {
        Ok(b) => b,
        Err(e) => {
            skip_or_fail(&format!("{} cannot run: {e}", chromium.display()));
            return;
        }
    };
    let (a, b) = (echo("a"), echo("b"));
    let config = yaml(&[a.addr, b.addr]);
    let lb = Autolb::start_with_env(&config, &[("T_ADMIN", TOKEN)]);

    // A refused reload, to be listed with its errors.
    std::fs::write(&lb.config, format!("{config}  broken: [\n")).expect("write");
    let mut admin = Client::connect(lb.admin).await;
    let reload = http::Request::post("/config/reload")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(admin.request(reload).await.status, 400);

    let mut page = Page::open(&browser).await.expect("open a page");
    page.navigate(&format!("http://{}/", lb.admin))
        .await
        .expect("navigate");
    let row = |addr: std::net::SocketAddr| {
        format!(".pool[data-pool=\"web\"] tr[data-backend=\"{addr}\"]")
    };
    page.wait_for(
        &format!(
            "document.querySelector('{} .badge')?.textContent === 'up'",
            row(a.addr)
        ),
        20,
        "backend a up",
    )
    .await;

    // The config view: the running config's hash and generation, routes, the refusal.
    let health = common::get(lb.admin, "/health").await.json();
    let hash = health["config"]["hash"].as_str().expect("hash").to_string();
    page.wait_for(
        &format!("document.querySelector('#config-facts [data-field=\"hash\"]')?.textContent === '{hash}'"),
        20,
        "the config hash",
    )
    .await;
    let generation = page
        .eval("document.querySelector('#config-facts [data-field=\"generation\"]').textContent")
        .await
        .expect("generation");
    assert!(
        generation
            .as_str()
            .is_some_and(|g| g.starts_with(&format!("{} ", health["config"]["generation"]))),
        "{generation}"
    );
    let route = page
        .eval("document.querySelector('#routes tr[data-route=\"0\"]').textContent")
        .await
        .expect("route");
    assert!(
        route.as_str().is_some_and(|r| r.contains("/api")
            && r.contains("→ web")
            && r.contains("50/s per IP")),
        "{route}"
    );
    let refused = page
        .wait_for(
            "[...document.querySelectorAll('#reloads tr[data-result=\"failure\"]')].map(r => r.textContent).find(t => t.includes('admin'))",
            20,
            "the refused reload",
        )
        .await;
    let file = lb.config.display().to_string();
    assert!(
        refused
            .as_str()
            .is_some_and(|t| t.contains("admin") && t.contains("refused") && t.contains(&file)),
        "{refused}"
    );

    // Limits, rate limits and the fleet.
    for sel in [
        "#limits tr[data-limit=\"queue\"][data-pool=\"web\"]",
        "#limits tr[data-limit=\"rate\"][data-pool=\"web\"]",
    ] {
        page.wait_for(&format!("!!document.querySelector('{sel}')"), 20, sel)
            .await;
    }
    let limits = page
        .eval("document.querySelector('#limits').textContent")
        .await
        .expect("limits");
    assert!(
        limits
            .as_str()
            .is_some_and(|t| t.contains("64 in flight, queue 16") && t.contains("500/s per IP")),
        "{limits}"
    );
    let mode = page
        .eval("document.querySelector('#fleet [data-field=\"mode\"]').textContent")
        .await
        .expect("mode");
    assert_eq!(mode, "memory (memory)");

    // The autoscaler's chart: desired is drawn last (on top), off ready's line.
    let chart = page
        .wait_for(
            "(() => { const s = document.querySelector('.scaler[data-pool=\"auto\"] svg.chart'); const r = s && s.querySelector('path.ready'); const d = s && s.querySelector('path.desired'); return r && d && s.lastElementChild === d && d.getAttribute('d') !== r.getAttribute('d') ? d.getAttribute('d') : null; })()",
            20,
            "desired above ready",
        )
        .await;
    assert!(
        chart.as_str().is_some_and(|d| d.starts_with('M')),
        "{chart}"
    );

    // Actions: the first one asks for the admin token, then drains.
    let drain = format!("{} button[data-action=\"drain\"]", row(a.addr));
    click(&mut page, &drain).await;
    page.wait_for(
        "!document.querySelector('#login').hidden",
        20,
        "the token form",
    )
    .await;
    assert_eq!(backend(&lb, a.addr).await.0, "ready");
    page.eval(&format!(
        "document.querySelector('#token').value = '{TOKEN}'; document.querySelector('#login').requestSubmit(); true"
    ))
    .await
    .expect("submit the token");
    click(&mut page, &drain).await;
    page.wait_for(
        &format!(
            "document.querySelector('{}')?.dataset.state === 'drain'",
            row(a.addr)
        ),
        20,
        "a draining on the page",
    )
    .await;
    assert_eq!(backend(&lb, a.addr).await.0, "drain");
    // A weight, kept with the state.
    page.eval(&format!(
        "document.querySelector('{} input.weight').value = '7'; true",
        row(a.addr)
    ))
    .await
    .expect("type a weight");
    click(
        &mut page,
        &format!("{} button[data-action=\"weight\"]", row(a.addr)),
    )
    .await;
    common::wait_until(20, "weight 7", || async {
        (backend(&lb, a.addr).await == ("drain".to_string(), 7)).then_some(())
    })
    .await;
    // Maintenance for b, then both ready again.
    click(
        &mut page,
        &format!("{} button[data-action=\"maint\"]", row(b.addr)),
    )
    .await;
    common::wait_until(20, "b in maintenance", || async {
        (backend(&lb, b.addr).await.0 == "maint").then_some(())
    })
    .await;
    for addr in [a.addr, b.addr] {
        page.wait_for(
            &format!(
                "document.querySelector('{}')?.dataset.state !== 'ready'",
                row(addr)
            ),
            20,
            "the page shows the state",
        )
        .await;
        click(
            &mut page,
            &format!("{} button[data-action=\"ready\"]", row(addr)),
        )
        .await;
        common::wait_until(20, "ready again", || async {
            (backend(&lb, addr).await.0 == "ready").then_some(())
        })
        .await;
    }
    let notice = page
        .eval("document.querySelector('#notice').textContent")
        .await
        .expect("notice");
    assert!(
        notice.as_str().is_some_and(|n| n.contains("ready")),
        "{notice}"
    );

    // 400 px wide: nothing sticks out of the page.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 400, "height": 900, "deviceScaleFactor": 1, "mobile": true }),
    )
    .await
    .expect("narrow the page");
    let before = page
        .eval("document.body.dataset.updated")
        .await
        .expect("eval");
    page.wait_for(
        &format!("document.body.dataset.updated !== {before}"),
        20,
        "a redraw at 400 px",
    )
    .await;
    let widths = page
        .eval(
            "(() => { const out = []; for (const el of document.querySelectorAll('body *')) { const r = el.getBoundingClientRect(); if (r.width && r.right > 401 && !el.closest('.table-wrap')) out.push(el.tagName + '.' + el.className + ' ' + Math.round(r.right)); } return { doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, out: out.slice(0, 10) }; })()",
        )
        .await
        .expect("widths");
    assert!(
        widths["doc"].as_u64() <= Some(400) && widths["body"].as_u64() <= Some(400),
        "the page is wider than 400 px: {widths}"
    );
    assert_eq!(widths["out"], serde_json::json!([]), "{widths}");
    let png = page.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-400px.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("400 px screenshot: {}", path.display());

    let exceptions = page.exceptions();
    assert!(exceptions.is_empty(), "the page threw: {exceptions:?}");
    drop(page);
    drop(browser);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Without a usable browser the test cannot say anything: it skips, saying why, except in
/// CI (`CI` set), where `.ci/run` installs Chromium and a missing browser is a failure.
fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("browser test cannot run in CI: {why}");
    }
    eprintln!("SKIPPED config_view_limits_fleet_actions_and_a_narrow_screen: {why}");
}
