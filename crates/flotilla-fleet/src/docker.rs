//! The `docker` driver: an instance is a container started through the Docker Engine API
//! ([`crate::engine`]) on the local socket, publishing its port on 127.0.0.1 only.
//!
//! Each container has a task that creates and starts it, follows its logs into ours, samples its
//! stats, notices when it exits, and on request stops (SIGTERM, then SIGKILL after the stop
//! timeout) and removes it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use serde_json::json;

use crate::container::{sample_stats, set, Container, CpuSample, Shared, Spec};
use crate::engine::{api, urlencode, Engine, EngineError, MAX_BODY};

/// Longest log line kept.
const MAX_LINE: usize = 8 * 1024;
/// How often a running container is checked.
const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the container's task; failures show up as an exit with the reason.
pub(crate) fn launch(engine: Engine, spec: Spec, instance: String) -> Container {
    let (container, shared) = Container::new();
    tokio::spawn(lifecycle(engine, spec, instance, shared));
    container
}

/// Removes containers a previous run of this group left behind (after a crash): this
/// deployment's (and node's) only, never another Flotilla's on the same host.
pub(crate) async fn remove_stale(engine: &Engine, scope: &crate::scope::Scope, group: &str) {
    let filters = scope.filters(group, false);
    let path = format!("/containers/json?all=true&filters={}", urlencode(&filters));
    let Ok(list) = engine.call("GET", &path, None).await else { return };
    for c in list.as_array().into_iter().flatten() {
        if let Some(id) = c["Id"].as_str() {
            tracing::info!(group, container = %&id[..12.min(id.len())], "removing a container left by a previous run");
            let _ = engine.call("DELETE", &format!("/containers/{id}?force=true"), None).await;
        }
    }
}

async fn lifecycle(engine: Engine, spec: Spec, instance: String, shared: Arc<Shared>) {
    let id = match create_and_start(&engine, &spec).await {
        Ok(id) => id,
        Err(e) => {
            let _ = engine.call("DELETE", &format!("/containers/{}?force=true", spec.name), None).await;
            set(&shared.exit, format!("could not start the container: {e}"));
            return;
        }
    };
    set(&shared.id, id.clone());
    tokio::spawn(follow_logs(engine.clone(), id.clone(), instance.clone()));
    let mut last_cpu: Option<CpuSample> = None;
    let mut next_stats = Instant::now();
    let ended = loop {
        if shared.wait_tick(POLL).await {
            break None;
        }
        match engine.call("GET", &format!("/containers/{id}/json"), None).await {
            Ok(v) if v["State"]["Running"] == true => {}
            Ok(v) => break Some(format!("exit status: {}", v["State"]["ExitCode"])),
            Err(e) => tracing::warn!(instance = %instance, error = %e, "inspecting the container failed"),
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + spec.stats_every;
            if let Some(u) = sample_stats(&engine, &id, &mut last_cpu).await {
                *shared.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
            }
        }
    };
    if ended.is_none() {
        let t = spec.stop_timeout.as_secs().max(1);
        if let Err(e) = engine.call("POST", &format!("/containers/{id}/stop?t={t}"), None).await {
            tracing::warn!(instance = %instance, error = %e, "stopping the container failed; removing it by force");
        }
    }
    if let Err(e) = engine.call("DELETE", &format!("/containers/{id}?force=true"), None).await {
        tracing::warn!(instance = %instance, error = %e, "removing the container failed");
    }
    set(&shared.exit, ended.unwrap_or_else(|| "stopped".into()));
}

async fn create_and_start(engine: &Engine, spec: &Spec) -> Result<String, EngineError> {
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
        engine.call("POST", &format!("/containers/create?name={}", urlencode(&spec.name)), Some(body)).await?;
    let id = created["Id"].as_str().ok_or_else(|| api("create", "no container id in the answer".into()))?.to_string();
    engine.call("POST", &format!("/containers/{id}/start"), None).await?;
    Ok(id)
}

/// Streams the container's stdout/stderr (Docker's 8-byte-header multiplexing) into our log.
async fn follow_logs(engine: Engine, id: String, instance: String) {
    let path = format!("/containers/{id}/logs?follow=true&stdout=true&stderr=true");
    let Ok(resp) = engine.send("GET", &path, None).await else { return };
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
