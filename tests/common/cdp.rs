//! A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket of JSON
//! messages): load a page, evaluate JavaScript in it, take a screenshot. The browser runs in
//! its own process group with a fresh profile, and is killed with its children on drop.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The browser binary: `$AUTOLB_CHROMIUM`, else Debian's `/usr/bin/chromium`, else
/// `chromium` or `chromium-browser` on PATH.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTOLB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/chromium"))
        .chain(
            std::env::split_paths(&path)
                .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")]),
        )
        .find(|p| p.is_file())
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    /// `ws://127.0.0.1:PORT/devtools/browser/ID`.
    pub ws_url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: the renderer, GPU and zygote processes too.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Start `binary` headless with a fresh profile; `Err` says why it cannot run.
    pub fn launch(binary: &std::path::Path, width: u32, height: u32) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut cmd = super::command(binary.to_str().ok_or("browser path is not UTF-8")?);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            &format!("--window-size={width},{height}"),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the browser never blocks.
                    continue;
                }
            }
        });
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.split("DevTools listening on ").nth(1) {
                        break url.trim().to_string();
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("no DevTools endpoint within 30 s; stderr:\n{seen}"));
                }
            }
        };
        Ok(Browser {
            child,
            ws_url,
            _profile: profile,
        })
    }
}

/// A CDP connection to the browser with one page attached (flat sessions).
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    /// Events received while waiting for answers (`Runtime.exceptionThrown`, ...).
    pub events: Vec<Value>,
}

impl Page {
    /// Open a new page (tab) in `browser`.
    pub async fn open(browser: &Browser) -> Result<Page, String> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(browser.ws_url.as_str()),
        )
        .await
        .map_err(|_| "DevTools connect timed out".to_string())?
        .map_err(|e| format!("DevTools connect: {e}"))?;
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
        };
        let target = page
            .call_browser("Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let id = target["targetId"]
            .as_str()
            .ok_or("no targetId")?
            .to_string();
        let attached = page
            .call_browser(
                "Target.attachToTarget",
                json!({ "targetId": id, "flatten": true }),
            )
            .await?;
        page.session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_string();
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        Ok(page)
    }

    async fn send(
        &mut self,
        session: Option<String>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within 30 s"))?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {e}")),
                None => return Err(format!("{method}: DevTools connection closed")),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    async fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(None, method, params).await
    }

    /// A CDP command on the page's session.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.send(Some(session), method, params).await
    }

    pub async fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url })).await?;
        match r.get("errorText") {
            Some(e) => Err(format!("navigate {url}: {e}")),
            None => Ok(()),
        }
    }

    /// The value of JavaScript `expression` (JSON-serialisable), or the exception it threw.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluate `expression` every 100 ms until it returns a truthy value (returned), for
    /// at most `secs`.
    pub async fn wait_for(&mut self, expression: &str, secs: u64, what: &str) -> Value {
        let d = super::Deadline::after(secs, what);
        loop {
            let last = match self.eval(expression).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") => {
                    return v
                }
                Ok(v) => v,
                Err(e) => json!(e),
            };
            d.tick_or(|| format!("last value: {last}")).await;
        }
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot: {e}"))
    }

    /// JavaScript exceptions the page threw so far (`Runtime.exceptionThrown`).
    pub fn exceptions(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .map(|e| e["params"]["exceptionDetails"].clone())
            .collect()
    }
}
