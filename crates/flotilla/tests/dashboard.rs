//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver) logs in with the admin token, watches the charts move while traffic flows, and
//! saves a screenshot. Skipped, saying so, where chromium or chromedriver is not installed.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    /// Kills chromedriver's whole process group: killing chromedriver alone orphans Chromium's
    /// processes, which then keep using CPU (and skew every benchmark run after the tests).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// With extra Chromium arguments (e.g. host resolver rules).
    async fn start_with(extra: &[&str]) -> Option<Self> {
        let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chromium).exists() || !std::path::Path::new(driver).exists() {
            eprintln!("skipping: chromium and chromedriver are not installed (Debian: chromium chromium-driver)");
            return None;
        }
        let port = free_port();
        let child = Command::new(driver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        let base = format!("http://127.0.0.1:{port}");
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1100",
        ];
        args.extend_from_slice(extra);
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
        }}}});
        let mut d = Self { child, base, session: String::new() };
        let v = d.call("POST", "/session", caps).await;
        d.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Some(d)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}/session", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let body = if method == "GET" { String::new() } else { body.to_string() };
        let (status, _, text) =
            request(&client(), method, &url, &[("content-type", "application/json")], &body).await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 300, "WebDriver {method} {path}: {status} {text}");
        v
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self.call("POST", "/element", json!({ "using": "css selector", "value": css })).await;
        match v["value"]["element-6066-11e4-a52e-4f735466cecf"].as_str() {
            Some(e) => e.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/clear"), json!({})).await;
        self.call("POST", &format!("/element/{e}/value"), json!({ "text": text })).await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({})).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": script, "args": [] })).await["value"].clone()
    }

    async fn wait_js(&self, script: &str, what: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script).await;
            if v != Value::Null && v != Value::Bool(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_logs_in_and_charts_live_traffic() {
    let Some(browser) = Driver::start().await else { return };
    let app = DemoApp::start("a");
    let body = format!(
        r#"[[routes]]
path = "/static/*"
target_group = "web"
cache = "static"

{ROUTE_ALL}{tg}
[cache_behaviors.static]
default_ttl = "1h"

[watch]
resolution = "500ms"

[[alarms]]
name = "high-5xx"
metric = "http_requests_5xx_rate"
period = "1s"
threshold = 0
missing_data = "not_breaching"

[[slos]]
name = "web-latency"
target_group = "web"
objective = "99%"
latency = "200ms"

[groups.api]
target_group = "api"
min = 1
metrics_interval = "500ms"
instance_warmup = "0s"
[groups.api.launch]
command = ["flotilla", "demo-app", "--port", "{{port}}", "--id", "{{instance}}"]
{api}"#,
        tg = group_toml("web", &[&app], ""),
        api = group_toml("api", &[], "")
    );
    let f = Flotilla::start("dashboard", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;

    // Without the token the page asks for it; a wrong one is refused.
    browser.goto(&f.admin("/")).await;
    browser
        .wait_js(
            "return !document.getElementById('login').classList.contains('hidden')",
            "the login form",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("#token", "wrong").await;
    browser.click("#login-button").await;
    browser
        .wait_js("return document.getElementById('login-error').textContent", "a refusal", Duration::from_secs(10))
        .await;
    browser.type_into("#token", "test-token").await;
    browser.click("#login-button").await;
    browser
        .wait_js(
            "return !document.getElementById('app').classList.contains('hidden')",
            "the dashboard",
            Duration::from_secs(10),
        )
        .await;
    let before = browser.js("return Number(document.getElementById('chart-requests').dataset.points || 0)").await;

    // Traffic: the request chart grows and shows a non-zero rate; the cache chart fills in.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for path in ["/whoami", "/static/app.css", "/status/500"] {
            let _ = get(&f.url(path)).await;
        }
    }
    let script = format!(
        "const c = document.getElementById('chart-requests').dataset; \
         return Number(c.points) > {before} && Number(c.last) > 0 && \
         Number(document.getElementById('chart-cache').dataset.points) > 0"
    );
    browser.wait_js(&script, "the charts moving", Duration::from_secs(15)).await;
    browser
        .wait_js(
            "return document.getElementById('groups').textContent.includes('api-0001') && \
             document.getElementById('alarms').textContent.includes('high-5xx') && \
             document.getElementById('slos').textContent.includes('web-latency')",
            "groups, alarms and SLOs",
            Duration::from_secs(15),
        )
        .await;
    let shot = browser.call("GET", "/screenshot", Value::Null).await;
    let png = decode_base64(shot["value"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    // A phone-sized window: one column, nothing wider than the screen.
    browser.call("POST", "/window/rect", json!({ "width": 390, "height": 844 })).await;
    browser
        .wait_js(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 && \
             document.querySelector('main').getBoundingClientRect().width <= window.innerWidth",
            "a layout that fits a phone",
            Duration::from_secs(10),
        )
        .await;
    let shot = browser.call("GET", "/screenshot", Value::Null).await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-phone.png");
    std::fs::write(&path, decode_base64(shot["value"].as_str().unwrap())).unwrap();
    eprintln!("dashboard phone screenshot: {}", path.display());
}

/// With reads protected, the dashboard logs in with the read-only token. And DNS rebinding, in a
/// real browser: Chromium resolves `rebind.test` to 127.0.0.1 (as an attacker's DNS would after
/// the page loaded), so a page from that name reaches the admin API's socket; the API refuses
/// the name, so the page gets no data and no script of its can read an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_protected_reads_and_a_rebinding_domain() {
    let Some(browser) = Driver::start_with(&["--host-resolver-rules=MAP rebind.test 127.0.0.1"]).await else {
        return;
    };
    let app = DemoApp::start("a");
    let (port, admin_port, dir) = (free_port(), free_port(), scratch_dir("dashboard-reads"));
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\
         read_token = \"read-token\"\n\n[watch]\nresolution = \"500ms\"\n\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start_raw("", &dir, &text, port, admin_port);
    browser.goto(&f.admin("/")).await;
    browser
        .wait_js(
            "return !document.getElementById('login').classList.contains('hidden')",
            "the login form",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("#token", "read-token").await;
    browser.click("#login-button").await;
    browser
        .wait_js(
            "return !document.getElementById('app').classList.contains('hidden') && \
             document.getElementById('targets').textContent.includes('127.0.0.1')",
            "the dashboard with the read token",
            Duration::from_secs(15),
        )
        .await;

    // The same API under a rebinding name: the page itself is refused, and so is its data.
    browser.goto(&format!("http://rebind.test:{admin_port}/")).await;
    let text = browser.js("return document.body ? document.body.textContent : ''").await;
    assert!(text.as_str().unwrap_or("").contains("not one this admin API answers to"), "{text}");
    let status = browser
        .call(
            "POST",
            "/execute/async",
            json!({ "script": "const done = arguments[0]; fetch('/api/v1/dashboard', { headers: { Authorization: 'Bearer read-token' } }).then(r => done(r.status), e => done(String(e)));", "args": [] }),
        )
        .await;
    assert_eq!(status["value"], 421, "{status}");
}

/// Standard base64 (the WebDriver screenshot encoding), without a crate for one test.
fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => 0,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | val(c) as u32) << (6 * (4 - chunk.len()));
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad.min(2)]);
    }
    out
}
