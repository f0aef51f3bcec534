//! The `docker` driver: an instance is a container started through the Docker Engine API on the
//! local socket, publishing its port on 127.0.0.1 only.
//!
//! A small client over hyper (already in the tree) rather than `bollard`: the fleet needs nine
//! endpoints, and bollard adds ~80 crates (48 s of a cold build on 2 cores). Each container has a
//! task that creates and starts it, follows its logs into ours, samples its stats, notices when
//! it exits, and on request stops (SIGTERM, then SIGKILL after the stop timeout) and removes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// API calls that do not stream must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest non-streaming answer read (inspect, stats and errors are a few KiB).
const MAX_BODY: usize = 1 << 20;
/// Longest log line kept.
const MAX_LINE: usize = 8 * 1024;
/// How often a running container is checked.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("Docker API {what}: {message}")]
    Api { what: String, message: String },
}

/// The daemon's unix socket: `DOCKER_HOST=unix://…` or `/var/run/docker.sock`.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

impl Default for Docker {
    fn default() -> Self {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        Self { socket }
    }
}

impl Docker {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::Response<Incoming>, DockerError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| DockerError::Connect { path: self.socket.display().to_string(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| api(path, e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req =
            hyper::Request::builder().method(method).uri(format!("http://docker/v1.41{path}")).header("host", "docker");
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| api(path, e.to_string()))?;
        sender.send_request(req).await.map_err(|e| api(path, e.to_string()))
    }

    /// One call with a bounded answer; non-2xx becomes an error carrying Docker's message.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, DockerError> {
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
            let bytes = limited.collect().await.map_err(|e| api(path, e.to_string()))?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                Ok(v)
            } else {
                let msg = v["message"].as_str().map(String::from).unwrap_or_else(|| status.to_string());
                Err(api(&format!("{method} {path}"), msg))
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.unwrap_or_else(|_| Err(api(path, "timed out".into())))
    }

    /// True when the daemon answers `/_ping`.
    pub async fn available(&self) -> bool {
        let fut = async {
            let resp = self.send("GET", "/_ping", None).await.ok()?;
            Some(resp.status().is_success())
        };
        tokio::time::timeout(Duration::from_secs(3), fut).await.ok().flatten().unwrap_or(false)
    }

    /// Removes containers a previous run of this group left behind (after a crash): this
    /// deployment's (and node's) only, never another Flotilla's on the same host.
    pub(crate) async fn remove_stale(&self, scope: &crate::scope::Scope, group: &str) {
        let filters = scope.filters(group, false);
        let path = format!("/containers/json?all=true&filters={}", urlencode(&filters));
        let Ok(list) = self.call("GET", &path, None).await else { return };
        for c in list.as_array().into_iter().flatten() {
            if let Some(id) = c["Id"].as_str() {
                tracing::info!(group, container = %&id[..12.min(id.len())], "removing a container left by a previous run");
                let _ = self.call("DELETE", &format!("/containers/{id}?force=true"), None).await;
            }
        }
    }
}

fn api(what: &str, message: String) -> DockerError {
    DockerError::Api { what: what.to_string(), message }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What to start.
pub struct Spec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub container_port: u16,
    pub host_port: u16,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub stop_timeout: Duration,
    pub stats_every: Duration,
    /// `driver = "swarm"`: run as a Swarm service with these placement constraints.
    pub swarm: Option<Vec<String>>,
}

/// A container instance as the reconcile loop sees it; the work happens in its task.
pub struct Container {
    shared: Arc<Shared>,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub id: Mutex<Option<String>>,
    pub exit: Mutex<Option<String>>,
    pub stopping: AtomicBool,
    /// Let go without stopping (a Swarm service handed to another leader).
    pub detached: AtomicBool,
    pub stop: Notify,
    /// Latest (cpu % of one core, memory bytes).
    pub usage: Mutex<Option<(Option<f64>, u64)>>,
    /// Where a Swarm task answers (its node's address and the host port Swarm published),
    /// once it runs; plain containers are reached where they were launched.
    pub addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Shared {
    /// Waits one poll interval, or less if a stop is requested; true once stopping.
    pub(crate) async fn wait_tick(&self, poll: Duration) -> bool {
        if !self.stopping.load(Ordering::Acquire) {
            tokio::select! {
                _ = self.stop.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        self.stopping.load(Ordering::Acquire)
    }
}

impl Container {
    /// Starts the container's task; failures show up as an exit with the reason.
    pub fn launch(docker: Docker, spec: Spec, instance: String) -> Self {
        let shared = Arc::new(Shared::default());
        match spec.swarm.clone() {
            Some(constraints) => {
                tokio::spawn(crate::swarm::lifecycle(docker, spec, constraints, instance, shared.clone()))
            }
            None => tokio::spawn(lifecycle(docker, spec, instance, shared.clone())),
        };
        Self { shared }
    }

    /// Follows a Swarm service that already runs (a new leader adopting it).
    pub(crate) fn adopt(docker: Docker, spec: Spec, service: String, instance: String) -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(crate::swarm::follow(docker, spec, service, instance, shared.clone()));
        Self { shared }
    }

    /// Lets go of the instance without stopping it (another node leads its group now).
    pub(crate) fn detach(&self) {
        self.shared.detached.store(true, Ordering::Release);
        self.terminate();
    }

    /// Why it ended, once it has (and, after a stop, once it is removed).
    pub fn exited(&self) -> Option<String> {
        self.shared.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop (Docker sends SIGTERM, then SIGKILL after the stop timeout) and remove.
    pub fn terminate(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_one();
    }

    pub fn usage(&self) -> Option<(Option<f64>, u64)> {
        *self.shared.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> Option<String> {
        self.shared.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A Swarm task's address, once Swarm has placed it and published its port.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        *self.shared.addr.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn set(slot: &Mutex<Option<String>>, v: String) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

async fn lifecycle(docker: Docker, spec: Spec, instance: String, shared: Arc<Shared>) {
    let id = match create_and_start(&docker, &spec).await {
        Ok(id) => id,
        Err(e) => {
            let _ = docker.call("DELETE", &format!("/containers/{}?force=true", spec.name), None).await;
            set(&shared.exit, format!("could not start the container: {e}"));
            return;
        }
    };
    set(&shared.id, id.clone());
    tokio::spawn(follow_logs(docker.clone(), id.clone(), instance.clone()));
    let mut last_cpu: Option<CpuSample> = None;
    let mut next_stats = Instant::now();
    let ended = loop {
        if shared.wait_tick(POLL).await {
            break None;
        }
        match docker.call("GET", &format!("/containers/{id}/json"), None).await {
            Ok(v) if v["State"]["Running"] == true => {}
            Ok(v) => break Some(format!("exit status: {}", v["State"]["ExitCode"])),
            Err(e) => tracing::warn!(instance = %instance, error = %e, "inspecting the container failed"),
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + spec.stats_every;
            if let Some(u) = sample_stats(&docker, &id, &mut last_cpu).await {
                *shared.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
            }
        }
    };
    if ended.is_none() {
        let t = spec.stop_timeout.as_secs().max(1);
        if let Err(e) = docker.call("POST", &format!("/containers/{id}/stop?t={t}"), None).await {
            tracing::warn!(instance = %instance, error = %e, "stopping the container failed; removing it by force");
        }
    }
    if let Err(e) = docker.call("DELETE", &format!("/containers/{id}?force=true"), None).await {
        tracing::warn!(instance = %instance, error = %e, "removing the container failed");
    }
    set(&shared.exit, ended.unwrap_or_else(|| "stopped".into()));
}

/// The cumulative CPU counters of one `docker stats` answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    /// When the answer arrived here: the fallback clock when the daemon gives no host total.
    at: Instant,
    /// The container's CPU time, ns.
    total: u64,
    /// The host's CPU time over all cores, ns, read by the daemon together with `total`.
    system: Option<u64>,
    online_cpus: u64,
}

impl CpuSample {
    fn from_stats(s: &serde_json::Value, at: Instant) -> Self {
        let c = &s["cpu_stats"];
        Self {
            at,
            total: c["cpu_usage"]["total_usage"].as_u64().unwrap_or(0),
            system: c["system_cpu_usage"].as_u64().filter(|&v| v > 0),
            online_cpus: c["online_cpus"].as_u64().filter(|&n| n > 0).unwrap_or(1),
        }
    }

    /// CPU % of one core between two samples, as `docker stats` computes it: the container's
    /// share of the host's CPU time times the number of CPUs. Both counters come from the same
    /// read in the daemon, so a slow answer cannot skew the interval; timing the answers here
    /// did (one slow `stats` call on a loaded host read as 266 % and scaled a group out). The
    /// arrival clock is used only when the daemon reports no host total.
    fn percent_since(&self, prev: &CpuSample) -> Option<f64> {
        let used = self.total.checked_sub(prev.total)? as f64;
        let pct = match (self.system, prev.system) {
            (Some(now), Some(then)) if now > then => used / (now - then) as f64 * self.online_cpus as f64 * 100.0,
            _ => {
                let wall = self.at.checked_duration_since(prev.at)?.as_secs_f64();
                if wall <= 0.0 {
                    return None;
                }
                used / 1e9 / wall * 100.0
            }
        };
        Some(pct.min(self.online_cpus as f64 * 100.0))
    }
}

/// One stats sample: (cpu % of one core since the previous sample, memory bytes).
pub(crate) async fn sample_stats(
    docker: &Docker,
    id: &str,
    last_cpu: &mut Option<CpuSample>,
) -> Option<(Option<f64>, u64)> {
    let s = docker.call("GET", &format!("/containers/{id}/stats?stream=false&one-shot=true"), None).await.ok()?;
    let mem = s["memory_stats"]["usage"].as_u64().unwrap_or(0);
    let sample = CpuSample::from_stats(&s, Instant::now());
    let cpu = last_cpu.as_ref().and_then(|prev| sample.percent_since(prev));
    *last_cpu = Some(sample);
    Some((cpu, mem))
}

async fn create_and_start(docker: &Docker, spec: &Spec) -> Result<String, DockerError> {
    let port_key = format!("{}/tcp", spec.container_port);
    let mut host = json!({
        "PortBindings": { &port_key: [{ "HostIp": "127.0.0.1", "HostPort": spec.host_port.to_string() }] },
        "Init": true,
    });
    if let Some(c) = spec.cpus {
        host["NanoCpus"] = json!((c * 1e9) as u64);
    }
    if let Some(m) = spec.memory {
        host["Memory"] = json!(m);
    }
    let mut body = json!({
        "Image": spec.image,
        "Env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": spec.labels,
        "ExposedPorts": { &port_key: {} },
        "HostConfig": host,
    });
    if let Some(cmd) = &spec.command {
        body["Cmd"] = json!(cmd);
    }
    let created =
        docker.call("POST", &format!("/containers/create?name={}", urlencode(&spec.name)), Some(body)).await?;
    let id = created["Id"].as_str().ok_or_else(|| api("create", "no container id in the answer".into()))?.to_string();
    docker.call("POST", &format!("/containers/{id}/start"), None).await?;
    Ok(id)
}

/// Streams the container's stdout/stderr (Docker's 8-byte-header multiplexing) into our log.
async fn follow_logs(docker: Docker, id: String, instance: String) {
    let path = format!("/containers/{id}/logs?follow=true&stdout=true&stderr=true");
    let Ok(resp) = docker.send("GET", &path, None).await else { return };
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut lines: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        while buf.len() >= 8 {
            let size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + size {
                break;
            }
            let stream = if buf[0] == 2 { 1 } else { 0 };
            buf.advance(8);
            let payload = buf.split_to(size);
            for &b in payload.iter() {
                let line = &mut lines[stream];
                if b == b'\n' {
                    let name = if stream == 1 { "stderr" } else { "stdout" };
                    tracing::info!(instance = %instance, stream = name, "{}", String::from_utf8_lossy(line).trim_end());
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(b);
                }
            }
        }
        if buf.len() > MAX_BODY {
            return; // a frame header claiming more than we keep: stop following rather than grow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats(total: u64, system: Option<u64>) -> serde_json::Value {
        json!({ "cpu_stats": { "cpu_usage": { "total_usage": total }, "system_cpu_usage": system, "online_cpus": 2 } })
    }

    #[test]
    fn cpu_percent_uses_the_daemons_counters_not_answer_arrival() {
        let t0 = Instant::now();
        let prev = CpuSample::from_stats(&stats(1_000_000_000, Some(10_000_000_000)), t0);
        // Half a second of container CPU over 2 s of host CPU time (two cores: 1 s of wall
        // clock): 50 % of one core, however late or early the answers arrived.
        let late = CpuSample::from_stats(&stats(1_500_000_000, Some(12_000_000_000)), t0 + Duration::from_millis(100));
        assert_eq!(late.percent_since(&prev), Some(50.0));
    }

    #[test]
    fn cpu_percent_falls_back_to_arrival_time_and_is_capped_at_every_core() {
        let t0 = Instant::now();
        let prev = CpuSample::from_stats(&stats(0, None), t0);
        let cur = CpuSample::from_stats(&stats(250_000_000, None), t0 + Duration::from_secs(1));
        assert_eq!(cur.percent_since(&prev), Some(25.0));
        let burst = CpuSample::from_stats(&stats(5_000_000_000, None), t0 + Duration::from_secs(1));
        assert_eq!(burst.percent_since(&prev), Some(200.0));
        // A counter that went backwards (a restarted container) gives no sample.
        assert_eq!(prev.percent_since(&cur), None);
    }
}
