//! The admin API against a real browser (headless Chromium over the DevTools protocol):
//! pages on another site (`localhost` vs `127.0.0.1`) or the same host on another port
//! cannot change anything through a loopback admin without a POST token, while the
//! dashboard (the admin's own origin) asks for the read token once, keeps it for the tab,
//! and its own JSON POSTs work.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cdp::{find_chromium, Browser, Page};
use common::{backend_list, config, echo, hyper_backend, Autolb, Client};

const READ: &str = "read-token-for-the-browser";

/// A page whose script tries, as a hostile site would, to reload the admin's config and
/// drain a backend: "simple" no-cors POSTs (what a form can send too), and a JSON POST
/// that needs a CORS preflight. `window.attempts` is set when all have settled.
fn hostile_page(admin: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"<!doctype html><html><body><script>
(async () => {{
  const base = "http://{admin}";
  const drain = JSON.stringify({{ pool: "web", backend: "{backend}", state: "drain" }});
  const out = [];
  const attempt = async (what, path, init) => {{
    try {{ const r = await fetch(base + path, init); out.push(what + ":" + r.type + ":" + r.status); }}
    catch (e) {{ out.push(what + ":failed"); }}
  }};
  await attempt("reload-text", "/config/reload", {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "text/plain" }}, body: "{{}}" }});
  await attempt("drain-nobody-type", "/backends/state", {{ method: "POST", mode: "no-cors", body: drain }});
  await attempt("drain-form", "/backends/state", {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "application/x-www-form-urlencoded" }}, body: drain }});
  await attempt("drain-json", "/backends/state", {{ method: "POST", headers: {{ "Content-Type": "application/json" }}, body: drain }});
  window.attempts = out;
}})();
</script></body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_pages_cannot_post_and_the_dashboard_can_with_its_token() {
    let Some(chromium) = find_chromium() else {
        skip_or_fail("no chromium binary (apt-get install chromium, or set AUTOLB_CHROMIUM)");
        return;
    };
    let browser = match Browser::launch(&chromium, 1200, 900) {
        Ok(b) => b,
        Err(e) => {
            skip_or_fail(&format!("{} cannot run: {e}", chromium.display()));
            return;
        }
    };
    let (a, b) = (echo("a"), echo("b"));
    // A loopback admin without token_env (POSTs are guarded by the cross-site rules only),
    // with a read token.
    let yaml = config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            backend_list(&[a.addr, b.addr], "")
        ),
    )
    .replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", read_token_env: T_READ }",
    );
    let lb = Autolb::start_with_env(&yaml, &[("T_READ", READ)]);
    let admin = lb.admin;
    let html = hostile_page(admin, a.addr);
    let hostile = hyper_backend(move |_req| {
        let html = html.clone();
        async move {
            let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(html)));
            resp.headers_mut()
                .insert("content-type", http::HeaderValue::from_static("text/html"));
            resp
        }
    })
    .await;

    let mut page = Page::open(&browser).await.expect("open a page");
    // Another site (localhost is not 127.0.0.1), then the same host on another port.
    for (n, origin) in [
        format!("http://localhost:{}", hostile.port()),
        format!("http://127.0.0.1:{}", hostile.port()),
    ]
    .iter()
    .enumerate()
    {
        page.navigate(&format!("{origin}/"))
            .await
            .expect("navigate");
        let attempts = page
            .wait_for("window.attempts", 20, "the hostile page's attempts")
            .await;
        println!("{origin}: {attempts}");
        // The preflight of the JSON POST is refused (405, no CORS): it is never sent.
        assert!(
            attempts.to_string().contains("drain-json:failed"),
            "{attempts}"
        );
        // The three simple POSTs reached the admin and were refused as cross-site.
        common::wait_until(10, "the refusals in the log", || async {
            (refused_now(&lb) >= 3 * (n + 1)).then_some(())
        })
        .await;
    }
    let log = lb.proc.log();
    assert!(log.contains("Sec-Fetch-Site: cross-site"), "{log}");
    assert!(log.contains("Sec-Fetch-Site: same-site"), "{log}");

    // Nothing changed: no reload, a still takes requests.
    let mut c = Client::connect(admin).await;
    let auth = format!("Bearer {READ}");
    let h = c.get("/health").await.json();
    assert!(h["config"]["last_reload"].is_null(), "{h:#}");
    let s = c
        .get_with("/loadbalancer/status", &[("authorization", &auth)])
        .await
        .json();
    assert!(
        s["pools"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .all(|b| b["state"] == "ready"),
        "{s:#}"
    );

    // The dashboard asks for the read token, then shows live data.
    page.navigate(&format!("http://{admin}/"))
        .await
        .expect("navigate");
    page.wait_for(
        "!document.querySelector('#login').hidden",
        20,
        "the token form",
    )
    .await;
    page.eval(&format!(
        "document.querySelector('#token').value = '{READ}'; document.querySelector('#login').requestSubmit(); true"
    ))
    .await
    .expect("submit the token");
    let row = format!(
        "!!document.querySelector('.pool[data-pool=\"web\"] tr[data-backend=\"{}\"]')",
        a.addr
    );
    page.wait_for(&row, 20, "backend rows").await;
    assert_eq!(
        page.eval("document.querySelector('#login').hidden")
            .await
            .expect("eval"),
        true
    );
    // Kept for the tab: a reload of the page needs no second prompt.
    page.navigate(&format!("http://{admin}/"))
        .await
        .expect("navigate");
    page.wait_for(&row, 20, "backend rows after a reload").await;
    assert_eq!(
        page.eval("document.querySelector('#login').hidden")
            .await
            .expect("eval"),
        true
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('autolb-admin-token')")
            .await
            .expect("eval"),
        READ
    );

    // The page's own JSON POST (same origin) is served.
    let answer = page
        .eval(&format!(
            r#"(async () => {{
  const r = await fetch("/backends/state", {{ method: "POST", headers: {{ "Content-Type": "application/json" }},
    body: JSON.stringify({{ pool: "web", backend: "{}", state: "drain" }}) }});
  return r.status + " " + (await r.text());
}})()"#,
            a.addr
        ))
        .await
        .expect("same-origin POST");
    let answer = answer.as_str().expect("text");
    assert!(answer.starts_with("200 "), "{answer}");
    let s = c
        .get_with("/loadbalancer/status", &[("authorization", &auth)])
        .await
        .json();
    let a_state = s["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == a.addr.to_string())
        .map(|b| b["state"].clone());
    assert_eq!(a_state, Some(serde_json::json!("drain")));
    let exceptions = page.exceptions();
    assert!(exceptions.is_empty(), "the page threw: {exceptions:?}");
    drop(page);
    drop(browser);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Cross-site POSTs autolb logged as refused so far.
fn refused_now(lb: &Autolb) -> usize {
    lb.proc.log().matches("refused a cross-site POST").count()
}

/// Without a usable browser the test cannot say anything: it skips, saying why, except in
/// CI (`CI` set), where `.ci/run` installs Chromium and a missing browser is a failure.
fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("browser test cannot run in CI: {why}");
    }
    eprintln!("SKIPPED other_pages_cannot_post_and_the_dashboard_can_with_its_token: {why}");
}
