//! Test harness: starts the real `flotilla` binary and real demo-app processes on loopback,
//! and gives tests a small HTTP client. Processes are killed when their handles drop.

#![allow(dead_code)]

pub mod docker;
pub mod hooks;
pub mod redis;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub mod nginx;
pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A port that is free now and not handed out before by this test binary. Taken from
/// 20000-29999, below the kernel's ephemeral range, so the processes the tests start (demo apps,
/// fleet instances, outgoing connections) cannot be given the same port in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test binary starts at its own offset, so parallel binaries rarely probe the same ports.
    let offset = (std::process::id() % 100) * 100;
    for _ in 0..10_000 {
        let port = (20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-29999")
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn scratch_dir(name: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_dead_scratch_dirs);
    let dir = std::env::temp_dir().join(format!("flotilla-test-{name}-{}-{}", std::process::id(), fastrand_u32()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the scratch directories of test processes that have exited, so runs do not pile up
/// in the temp dir; the last run's directories stay until the next one starts (for debugging).
fn sweep_dead_scratch_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("flotilla-test-") else { continue };
        let mut parts = rest.rsplitn(3, '-');
        let (_, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    t.subsec_nanos()
}

/// A process that is SIGKILLed on drop unless it already exited.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for exit and returns the code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct DemoApp {
    pub port: u16,
    pub id: String,
    pub proc: Proc,
}

impl DemoApp {
    pub fn start(id: &str) -> Self {
        Self::start_with(id, &[])
    }

    /// With extra `demo-app` arguments, e.g. `["--photos", dir]`.
    pub fn start_with(id: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["demo-app", "--port", &port.to_string(), "--id", id])
            .args(extra)
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Self { port, id: id.into(), proc: Proc { child } }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub struct Flotilla {
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub proc: Proc,
}

impl Flotilla {
    /// Writes `body` after an `[edge]`/`[admin]` header with fresh ports and starts `flotilla up`.
    /// `{dir}` in the body is replaced by the scratch directory.
    pub fn start(name: &str, body: &str) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let dir = scratch_dir(name);
        let header = format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n"
        );
        Self::start_raw(name, &dir, &(header + &body.replace("{dir}", dir.to_str().unwrap())), port, admin_port)
    }

    /// Like `start`, with extra `[edge]` keys (e.g. `timeouts = { idle = "1s" }`).
    pub fn start_with_edge(name: &str, edge_keys: &str, body: &str) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let dir = scratch_dir(name);
        let text = format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n{edge_keys}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n{body}"
        );
        Self::start_raw(name, &dir, &text, port, admin_port)
    }

    /// Like `start`, in a directory the test prepared (files the config names relative to it).
    pub fn start_in(dir: &std::path::Path, body: &str) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let text = format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n{body}"
        );
        Self::start_raw("", dir, &text, port, admin_port)
    }

    pub fn start_raw(_name: &str, dir: &std::path::Path, text: &str, port: u16, admin_port: u16) -> Self {
        Self::start_logging(dir, text, port, admin_port, "info")
    }

    /// Like `start_raw`, with `FLOTILLA_LOG` set to `level` (e.g. "debug").
    pub fn start_logging(dir: &std::path::Path, text: &str, port: u16, admin_port: u16, level: &str) -> Self {
        Self::start_env(dir, text, port, admin_port, level, &[])
    }

    /// Like `start_logging`, with extra variables in flotilla's environment (e.g. secrets).
    pub fn start_env(
        dir: &std::path::Path,
        text: &str,
        port: u16,
        admin_port: u16,
        level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_wrapped(dir, text, port, admin_port, level, env, &[])
    }

    /// Like `start_env`, run through `wrapper` (e.g. `["/usr/bin/prlimit", "--nofile=1024:"]`).
    pub fn start_wrapped(
        dir: &std::path::Path,
        text: &str,
        port: u16,
        admin_port: u16,
        level: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        let config = dir.join("flotilla.toml");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.join("flotilla.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["up", "--config", config.to_str().unwrap()])
            .env("FLOTILLA_LOG", level)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let f = Self { port, admin_port, dir: dir.to_path_buf(), config, proc: Proc { child } };
        wait_for_port(port);
        wait_for_port(admin_port);
        f
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `GET /api/v1/groups/{name}` (a fleet group) as JSON.
    pub async fn group(&self, name: &str) -> serde_json::Value {
        let (status, body) = get(&self.admin(&format!("/api/v1/groups/{name}"))).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls fleet group `name` until `pred` holds; after `limit`, panics with the group, its
    /// activity and the log's tail.
    pub async fn wait_group(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let g = self.group(name).await;
            if pred(&g) {
                return g;
            }
            if Instant::now() > deadline {
                let (_, activity) = get(&self.admin(&format!("/api/v1/groups/{name}/activity"))).await;
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                panic!("timed out waiting for {what}\ngroup: {g:#}\nactivity: {activity}\nlog tail: {tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An admin API call with the test token; (status, body).
    pub async fn admin_call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let r = request(&client(), method, &self.admin(path), &[("authorization", "Bearer test-token")], body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.0, r.2)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("flotilla.log")).unwrap_or_default()
    }

    /// Polls the admin API until `addr` in `group` reports `state` (or panics after `limit`).
    pub async fn wait_target_state(&self, group: &str, addr: &str, state: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (_, body) = get(&self.admin("/api/v1/target-groups")).await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let found = v["target_groups"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| g["name"] == group)
                .flat_map(|g| g["targets"].as_array().unwrap().clone())
                .find(|t| t["addr"] == addr)
                .map(|t| t["state"].as_str().unwrap_or("").to_string())
                .unwrap_or_else(|| "absent".into());
            if found == state {
                return;
            }
            assert!(Instant::now() < deadline, "{addr} in {group} is {found}, expected {state}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn get(url: &str) -> (u16, String) {
    let (s, _, b) = request(&client(), "GET", url, &[], "").await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (s, b)
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, http::HeaderMap, String), String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends raw bytes on a fresh connection and returns everything read until close or 3 s.
pub fn raw(addr: SocketAddr, data: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(data);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `/proc/PID/status` figure in KiB: `"VmRSS:"` now, `"VmHWM:"` the peak so far.
pub fn proc_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A target-group TOML block for `apps` with fast health checks (for tests).
pub fn group_toml(name: &str, apps: &[&DemoApp], extra: &str) -> String {
    let targets: Vec<String> = apps.iter().map(|a| format!("\"{}\"", a.addr())).collect();
    format!(
        "[target_groups.{name}]\ntargets = [{}]\n{extra}\n[target_groups.{name}.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        targets.join(", ")
    )
}

/// The real photos every image test uses (`../shared/corpus/images`, never invented pictures).
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/images").canonicalize().unwrap()
}

pub const ROUTE_ALL: &str = "[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\n\n";

/// Clients requesting one URL back to back until stopped, counting what succeeded (200) and
/// describing what did not: the "no failed requests under load" checks.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(url: &str, clients: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.to_string(), stop.clone());
                tokio::spawn(async move {
                    let c = client();
                    let (mut ok, mut failed) = (0, vec![]);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match request(&c, "GET", &url, &[], "").await {
                            Ok((200, _, _)) => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients; returns (successful requests, failures).
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, vec![]);
        for t in self.tasks {
            if let Ok((o, f)) = t.await {
                ok += o;
                failed.extend(f);
            }
        }
        (ok, failed)
    }
}

/// The value of the first Prometheus exposition line starting with `line_start` (a metric name,
/// with its labels when they matter), as an integer counter or gauge.
pub fn metric_value(exposition: &str, line_start: &str) -> Option<u64> {
    exposition.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A webhook receiver on 127.0.0.1: answers 200 (500 to the first request with `fail_first`)
/// and hands every JSON body it accepted to the test.
pub async fn webhook_receiver(fail_first: bool) -> (u16, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut first = fail_first;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = conn.read(&mut chunk).await else { break None };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let status = if first { "500 Internal Server Error" } else { "200 OK" };
            let _ = conn
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
            if let Some(body) = body {
                if !first {
                    let _ = tx.send(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                }
                first = false;
            }
        }
    });
    (port, rx)
}
