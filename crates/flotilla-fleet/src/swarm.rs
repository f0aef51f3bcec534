//! The `swarm` driver: each instance is a Docker Swarm service of exactly one task.
//!
//! One service per instance, rather than one service scaled up and down, because Swarm picks its
//! own victims when a service's replica count drops (the highest slots, by design arbitrary).
//! With a service per instance Flotilla chooses the victim by its termination policy, drains it
//! at the edge, and only then removes that service — scale-in costs no failed request. Refresh
//! and rollback are Flotilla's, as with the other drivers. A service is created once and never
//! updated, so no write ever races a stale version (Swarm's "update out of sequence").
//!
//! The task's port is published in host mode with no fixed host port: Swarm gives each task its
//! own, read back from the task's `Status.PortStatus` with the address of the node it runs on
//! (`/nodes/{id}`, `Status.Addr`), so instances on other hosts are reached where they run. The
//! task is read back from Swarm (`/tasks`), the source of truth for what runs: its state, its
//! error, its container (for stats), its address. `Init` is set so a PID 1 that ignores SIGTERM does not hold each stop
//! for the whole grace period. The daemon must run with `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`
//! to start tasks from local-only images.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::container::{sample_stats, set, Container, CpuSample, Shared, Spec};
use crate::engine::{urlencode, Engine};

/// A task not running after this long (no node fits, image missing) counts as failed.
const START_LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);

/// How long other nodes get to stop routing to a service marked draining before it is removed.
const FOLLOWER_GRACE: Duration = Duration::from_millis(1500);

/// Task states after which a task never runs again.
const FINAL: [&str; 6] = ["complete", "shutdown", "failed", "rejected", "orphaned", "remove"];

fn service_body(spec: &Spec, constraints: &[String]) -> Value {
    let mut container = json!({
        "Image": spec.image,
        "Env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": spec.labels,
        "Init": true,
        "StopGracePeriod": spec.stop_timeout.as_nanos() as u64,
    });
    if let Some(cmd) = &spec.command {
        container["Args"] = json!(cmd);
    }
    let mut limits = json!({});
    if let Some(c) = spec.cpus {
        limits["NanoCPUs"] = json!((c * 1e9) as u64);
    }
    if let Some(m) = spec.memory {
        limits["MemoryBytes"] = json!(m);
    }
    json!({
        "Name": spec.name,
        "Labels": spec.labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": { "Limits": limits },
            // Flotilla replaces failed instances itself (and counts them); Swarm must not.
            "RestartPolicy": { "Condition": "none" },
            "Placement": { "Constraints": constraints },
        },
        "Mode": { "Replicated": { "Replicas": 1 } },
        // No `PublishedPort`: in host mode each task gets a free port of its node.
        "EndpointSpec": { "Ports": [port_spec(spec)] },
    })
}

fn port_spec(spec: &Spec) -> Value {
    let mut port = json!({ "Protocol": "tcp", "TargetPort": spec.container_port, "PublishMode": "host" });
    if spec.host_port != 0 {
        port["PublishedPort"] = json!(spec.host_port);
    }
    port
}

/// What Swarm says of a service's newest task.
struct TaskInfo {
    state: String,
    err: String,
    container: Option<String>,
    node: Option<String>,
    /// The host port Swarm published for it (host mode), once it runs.
    port: Option<u16>,
}

fn task_info(t: &Value) -> TaskInfo {
    let s = &t["Status"];
    TaskInfo {
        state: s["State"].as_str().unwrap_or("").to_string(),
        err: s["Err"].as_str().unwrap_or("").to_string(),
        container: s["ContainerStatus"]["ContainerID"].as_str().filter(|c| !c.is_empty()).map(String::from),
        node: t["NodeID"].as_str().filter(|n| !n.is_empty()).map(String::from),
        port: s["PortStatus"]["Ports"][0]["PublishedPort"].as_u64().and_then(|p| u16::try_from(p).ok()),
    }
}

/// How long a node's address is trusted before it is read again.
const NODE_ADDR_TTL: Duration = Duration::from_secs(60);

/// Node addresses, shared by every instance and follower of the process (followers read every
/// task four times a second; a node's address almost never changes).
static NODE_IPS: std::sync::Mutex<Option<HashMap<String, (IpAddr, Instant)>>> = std::sync::Mutex::new(None);

/// The address other hosts reach `node` at (`Status.Addr`). A node that reports none, or an
/// unspecified one, is this host.
async fn node_ip(engine: &Engine, node: &str) -> IpAddr {
    let cached = |ips: &mut Option<HashMap<String, (IpAddr, Instant)>>| {
        ips.get_or_insert_with(HashMap::new).get(node).filter(|(_, at)| at.elapsed() < NODE_ADDR_TTL).map(|(ip, _)| *ip)
    };
    if let Some(ip) = cached(&mut NODE_IPS.lock().unwrap_or_else(|e| e.into_inner())) {
        return ip;
    }
    let ip = match engine.call("GET", &format!("/nodes/{node}"), None).await {
        Ok(v) => v["Status"]["Addr"].as_str().and_then(|a| a.parse::<IpAddr>().ok()).filter(|ip| !ip.is_unspecified()),
        Err(e) => {
            tracing::debug!(node, error = %e, "reading the Swarm node failed");
            return IpAddr::V4(Ipv4Addr::LOCALHOST);
        }
    };
    let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    NODE_IPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(node.to_string(), (ip, Instant::now()));
    ip
}

/// Where a running task answers: its node's address and its published port.
async fn task_addr(engine: &Engine, t: &TaskInfo) -> Option<SocketAddr> {
    let port = t.port?;
    let ip = match &t.node {
        Some(n) => node_ip(engine, n).await,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    Some(SocketAddr::new(ip, port))
}

/// The newest task of each of `services` (by service id).
async fn newest_tasks(engine: &Engine, services: &[&str]) -> Result<HashMap<String, TaskInfo>, String> {
    let filters = json!({ "service": services }).to_string();
    let list = engine
        .call("GET", &format!("/tasks?filters={}", urlencode(&filters)), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut newest: HashMap<String, (u64, &Value)> = HashMap::new();
    for t in list.as_array().into_iter().flatten() {
        let (Some(service), version) = (t["ServiceID"].as_str(), t["Version"]["Index"].as_u64().unwrap_or(0)) else {
            continue;
        };
        if newest.get(service).is_none_or(|(v, _)| version > *v) {
            newest.insert(service.to_string(), (version, t));
        }
    }
    Ok(newest.into_iter().map(|(s, (_, t))| (s, task_info(t))).collect())
}

/// The service's newest task.
async fn task(engine: &Engine, service: &str) -> Result<Option<TaskInfo>, String> {
    Ok(newest_tasks(engine, &[service]).await?.remove(service))
}

/// Creates the instance's service and follows its task; failures show up as an exit with the
/// reason.
pub(crate) fn launch(engine: Engine, spec: Spec, constraints: Vec<String>, instance: String) -> Container {
    let (container, shared) = Container::new();
    tokio::spawn(lifecycle(engine, spec, constraints, instance, shared));
    container
}

/// Follows a service that already runs (a new leader adopting it).
pub(crate) fn adopt(
    engine: Engine,
    service: String,
    instance: String,
    stop_timeout: Duration,
    stats_every: Duration,
) -> Container {
    let (container, shared) = Container::new();
    tokio::spawn(follow(engine, Timing { stop_timeout, stats_every }, service, instance, shared));
    container
}

/// What following a task needs of its launch spec.
struct Timing {
    stop_timeout: Duration,
    stats_every: Duration,
}

async fn lifecycle(engine: Engine, spec: Spec, constraints: Vec<String>, instance: String, shared: Arc<Shared>) {
    let created = match engine.call("POST", "/services/create", Some(service_body(&spec, &constraints))).await {
        Ok(v) => v,
        Err(e) => {
            set(&shared.exit, format!("could not create the Swarm service: {e}"));
            return;
        }
    };
    let Some(service) = created["ID"].as_str().map(String::from) else {
        set(&shared.exit, "Swarm answered without a service id".into());
        return;
    };
    tracing::info!(instance = %instance, service = %&service[..12.min(service.len())], "Swarm service created");
    let timing = Timing { stop_timeout: spec.stop_timeout, stats_every: spec.stats_every };
    follow(engine, timing, service, instance, shared).await;
}

/// Watches one service's task until it ends or is stopped; on stop removes the service, unless
/// this node is handing the instance over to another leader (`detached`): then it only lets go.
async fn follow(engine: Engine, timing: Timing, service: String, instance: String, shared: Arc<Shared>) {
    let started = Instant::now();
    let mut last_cpu: Option<CpuSample> = None;
    let mut next_stats = Instant::now();
    let ended = loop {
        if shared.wait_tick(POLL).await {
            break None;
        }
        let container = match task(&engine, &service).await {
            Ok(Some(t)) if FINAL.contains(&t.state.as_str()) => {
                break Some(format!(
                    "Swarm task {}{}",
                    t.state,
                    if t.err.is_empty() { String::new() } else { format!(": {}", t.err) }
                ))
            }
            Ok(Some(t)) if t.state == "running" => {
                // Re-read every poll: a replaced task would have another node and port.
                let addr = task_addr(&engine, &t).await;
                let mut slot = shared.addr.lock().unwrap_or_else(|e| e.into_inner());
                if addr.is_some() && *slot != addr {
                    *slot = addr;
                }
                drop(slot);
                t.container
            }
            Ok(other) => {
                if started.elapsed() > START_LIMIT {
                    let why = other.map(|t| format!("{} {}", t.state, t.err)).unwrap_or_else(|| "no task".into());
                    break Some(format!("Swarm task not running after {START_LIMIT:?}: {why}"));
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(instance = %instance, error = %e, "reading the Swarm task failed");
                continue;
            }
        };
        let Some(id) = container else { continue };
        if shared.id.lock().unwrap_or_else(|e| e.into_inner()).as_deref() != Some(id.as_str()) {
            set(&shared.id, id.clone());
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + timing.stats_every;
            // The container is on this host in a one-machine swarm; on another host stats are
            // simply unavailable here (CPU policies then see no sample for this instance).
            if let Some(u) = sample_stats(&engine, &id, &mut last_cpu).await {
                *shared.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
            }
        }
    };
    if shared.detached.load(Ordering::Acquire) {
        set(&shared.exit, "handed over".into());
        return;
    }
    // Tell the other nodes first: they stop sending new requests to a service marked draining
    // (they poll four times a second), then the service goes.
    if ended.is_none() {
        match mark_draining(&engine, &service).await {
            Ok(()) => tokio::time::sleep(FOLLOWER_GRACE).await,
            Err(e) => tracing::warn!(instance = %instance, error = %e, "marking the Swarm service draining failed"),
        }
    }
    // Removing the service stops its task (SIGTERM, SIGKILL after StopGracePeriod); wait until
    // the task is gone so "exited" means the port is free again.
    if let Err(e) = engine.call("DELETE", &format!("/services/{service}"), None).await {
        tracing::warn!(instance = %instance, error = %e, "removing the Swarm service failed");
    }
    let deadline = Instant::now() + timing.stop_timeout + Duration::from_secs(10);
    while Instant::now() < deadline {
        match task(&engine, &service).await {
            Ok(Some(t)) if !FINAL.contains(&t.state.as_str()) => tokio::time::sleep(POLL).await,
            _ => break,
        }
    }
    set(&shared.exit, ended.unwrap_or_else(|| "stopped".into()));
}

/// Labels the service `flotilla.draining=1` with a version-checked update: Swarm refuses an
/// update carrying a stale `version` ("update out of sequence"), so the spec is re-read and the
/// update retried, never applied over someone else's change.
pub(crate) async fn mark_draining(engine: &Engine, service: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let current = engine.call("GET", &format!("/services/{service}"), None).await.map_err(|e| e.to_string())?;
        let version = current["Version"]["Index"].as_u64().ok_or("the service has no version")?;
        let mut spec = current["Spec"].clone();
        if spec["Labels"]["flotilla.draining"] == "1" {
            return Ok(());
        }
        spec["Labels"]["flotilla.draining"] = json!("1");
        match engine.call("POST", &format!("/services/{service}/update?version={version}"), Some(spec)).await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("out of sequence") => last = e.to_string(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// Removes one service (Swarm stops its task).
pub(crate) async fn remove(engine: &Engine, service: &str) {
    let _ = engine.call("DELETE", &format!("/services/{service}"), None).await;
}

/// Removes services a previous run of this group left behind (after a crash): this
/// deployment's only.
pub(crate) async fn remove_stale(engine: &Engine, scope: &crate::scope::Scope, group: &str) {
    let filters = scope.filters(group, true);
    let Ok(list) = engine.call("GET", &format!("/services?filters={}", urlencode(&filters)), None).await else {
        return;
    };
    for s in list.as_array().into_iter().flatten() {
        if let Some(id) = s["ID"].as_str() {
            tracing::info!(group, service = %&id[..12.min(id.len())], "removing a Swarm service left by a previous run");
            let _ = engine.call("DELETE", &format!("/services/{id}"), None).await;
        }
    }
}

/// A service of `group` that exists in the swarm (what a new leader adopts).
#[derive(Debug, Clone)]
pub(crate) struct Existing {
    pub service: String,
    pub instance: String,
    pub launch_version: u32,
    /// Where its task answers, once it runs.
    pub addr: Option<SocketAddr>,
    /// Marked by the leader before it removes the service: followers stop routing to it.
    pub draining: bool,
}

/// Every service of this deployment labelled with `group`, read from Swarm (the source of
/// truth for what runs).
pub(crate) async fn existing(
    engine: &Engine,
    scope: &crate::scope::Scope,
    group: &str,
) -> Result<Vec<Existing>, String> {
    let filters = scope.filters(group, true);
    let list = engine
        .call("GET", &format!("/services?filters={}", urlencode(&filters)), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut found: Vec<Existing> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let labels = &s["Spec"]["Labels"];
            Some(Existing {
                service: s["ID"].as_str()?.to_string(),
                instance: labels["flotilla.instance"].as_str()?.to_string(),
                launch_version: labels["flotilla.launch_version"].as_str()?.parse().ok()?,
                addr: None,
                draining: labels["flotilla.draining"] == "1",
            })
        })
        .collect();
    if found.is_empty() {
        return Ok(found);
    }
    let ids: Vec<&str> = found.iter().map(|e| e.service.as_str()).collect();
    let tasks = newest_tasks(engine, &ids).await?;
    for e in &mut found {
        if let Some(t) = tasks.get(&e.service).filter(|t| t.state == "running") {
            e.addr = task_addr(engine, t).await;
        }
    }
    Ok(found)
}

/// Whether the daemon is a Swarm manager (services can be created).
pub(crate) async fn is_manager(engine: &Engine) -> bool {
    engine.call("GET", "/info", None).await.is_ok_and(|v| v["Swarm"]["ControlAvailable"] == true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_task_in_host_mode_with_no_restarts() {
        let spec = Spec {
            name: "flotilla-web-1".into(),
            image: "demo:1".into(),
            command: Some(vec!["demo-app".into()]),
            env: [("A".to_string(), "1".to_string())].into(),
            labels: [("flotilla.group".to_string(), "web".to_string())].into(),
            container_port: 8080,
            host_port: 0,
            cpus: Some(0.5),
            memory: None,
            stop_timeout: Duration::from_secs(3),
            stats_every: Duration::from_secs(5),
        };
        let b = service_body(&spec, &["node.labels.zone==a".into()]);
        assert_eq!(b["Mode"]["Replicated"]["Replicas"], 1);
        assert_eq!(b["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        // No fixed host port: Swarm picks one per task (read back from PortStatus).
        assert!(b["EndpointSpec"]["Ports"][0].get("PublishedPort").is_none(), "{b}");
        assert_eq!(b["EndpointSpec"]["Ports"][0]["TargetPort"], 8080);
        assert_eq!(b["TaskTemplate"]["RestartPolicy"]["Condition"], "none");
        assert_eq!(b["TaskTemplate"]["Placement"]["Constraints"][0], "node.labels.zone==a");
        assert_eq!(b["TaskTemplate"]["ContainerSpec"]["Init"], true);
        assert_eq!(b["TaskTemplate"]["ContainerSpec"]["Args"][0], "demo-app");
        assert_eq!(b["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"], 3_000_000_000u64);
        assert_eq!(b["TaskTemplate"]["Resources"]["Limits"]["NanoCPUs"], 500_000_000u64);
    }

    #[test]
    fn a_tasks_port_and_node_come_from_its_status() {
        let t = task_info(&json!({
            "NodeID": "n1",
            "Status": {
                "State": "running",
                "ContainerStatus": { "ContainerID": "c1" },
                "PortStatus": { "Ports": [{ "Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 30001, "PublishMode": "host" }] }
            }
        }));
        assert_eq!(
            (t.state.as_str(), t.node.as_deref(), t.port, t.container.as_deref()),
            ("running", Some("n1"), Some(30001), Some("c1"))
        );
        let pending = task_info(&json!({ "Status": { "State": "pending" } }));
        assert_eq!((pending.node, pending.port), (None, None));
    }
}
