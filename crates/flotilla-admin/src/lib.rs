//! Flotilla's admin HTTP API: health, target groups, registration, auto scaling groups, cache
//! invalidation, reload and metrics.
//!
//! `router(state)` is a plain axum `Router`, so it is tested with `oneshot` and no socket.
//! Every mutating call needs `Authorization: Bearer <admin.token>`; reads are open unless
//! `admin.protect_reads` (then they need the admin or the read-only token); every request's
//! `Host` must name this API (see `access.rs`).

pub mod access;
mod auth;
mod dashboard;
mod groups;
mod time;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use flotilla_edge::Edge;
use serde::Deserialize;
use serde_json::json;

/// Actions the binary performs on the admin API's behalf (the admin crate reads no files).
pub trait Control: Send + Sync + 'static {
    /// Re-reads and applies the config file; `Err` carries every validation error.
    fn reload(&self) -> Result<(), String>;
    /// Every certificate the edge serves (files and ACME), as `GET /api/v1/certificates` shows.
    fn certificates(&self) -> serde_json::Value {
        json!({ "certificates": [] })
    }
    /// Metrics the binary adds to `/metrics` (certificates), in the text exposition format.
    fn metrics(&self) -> String {
        String::new()
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub edge: Arc<Edge>,
    pub fleet: Arc<flotilla_fleet::Fleet>,
    pub watch: Arc<flotilla_watch::Watch>,
    /// Tokens, read protection and the host rule (`admin.*`).
    pub access: access::Access,
    pub control: Arc<dyn Control>,
    /// Present when the node is part of a cluster (`[cluster]`).
    pub cluster: Option<Arc<flotilla_cluster::Cluster>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/api/v1/dashboard", get(dashboard::data))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/target-groups", get(target_groups))
        .route("/api/v1/target-groups/{name}/targets", post(register))
        .route("/api/v1/target-groups/{name}/targets/{addr}", delete(deregister))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/certificates", get(certificates))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/invalidations", post(invalidate))
        .route("/api/v1/invalidations/{id}", get(invalidation))
        .route("/api/v1/deployments", post(deployment))
        .route("/api/v1/metrics", get(watch::names))
        .route("/api/v1/metrics/query", get(watch::query))
        .route("/api/v1/alarms", get(watch::alarms))
        .route("/api/v1/slos", get(watch::slos))
        .route("/api/v1/notifiers", get(watch::notifiers))
        .route("/api/v1/budget", get(watch::budget))
        .route("/api/v1/groups", get(groups::list))
        .route("/api/v1/groups/{name}", get(groups::show))
        .route("/api/v1/groups/{name}/desired", put(groups::set_desired))
        .route("/api/v1/groups/{name}/activity", get(groups::activity))
        .route(
            "/api/v1/groups/{name}/refresh",
            post(groups::start_refresh).get(groups::show_refresh).delete(groups::cancel_refresh),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers every admin answer carries: nothing here may be framed, sniffed into another type,
/// leak its URL in a Referer, or be kept by a cache (answers hold live state and tokens are in
/// play).
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(header::HeaderName::from_static(name), header::HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    }
    resp
}

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Parses a JSON body whatever its Content-Type (`curl -d` sends a form type by default).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// One check in front of the router, so no route can forget it: the host, then the token a
/// change (or, with `protect_reads`, a read) needs. See `access.rs`.
async fn guard(State(state): State<AdminState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match state.access.check(req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, why)) => {
            let mut resp = error(status, &why);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

async fn certificates(State(state): State<AdminState>) -> Response {
    Json(state.control.certificates()).into_response()
}

async fn health(State(state): State<AdminState>) -> Response {
    let listening = !state.edge.bound_addrs().is_empty();
    let groups: serde_json::Map<String, serde_json::Value> = state
        .edge
        .target_groups()
        .into_iter()
        .map(|g| {
            let healthy = g.targets.iter().filter(|t| t.state == flotilla_edge::TargetState::Healthy).count();
            (g.name, json!({ "healthy": healthy, "total": g.targets.len() }))
        })
        .collect();
    let status = if listening { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if listening { "ok" } else { "unavailable" },
        "timestamp": time::now_rfc3339(),
        "checks": { "listeners": if listening { "ok" } else { "not listening" }, "target_groups": groups },
    });
    (status, Json(body)).into_response()
}

/// Everything flotilla exports, as one OpenMetrics text: the edge's metrics and the fleet's.
/// The watch records the same text, so `/metrics` and the watch's series always agree.
pub fn exposition(edge: &Edge, fleet: &flotilla_fleet::Fleet, control: &dyn Control) -> String {
    let mut text = edge.encode_metrics();
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text.truncate(stripped.len());
    }
    text.push_str(&fleet.encode_metrics());
    text.push_str(&control.metrics());
    text.push_str("# EOF\n");
    text
}

/// What the watch samples: `exposition()` plus the edge's fine latency buckets (hundreds of
/// lines per group, so they stay off `/metrics`), from which it computes p50/p95/p99.
pub fn exposition_for_watch(edge: &Edge, fleet: &flotilla_fleet::Fleet, control: &dyn Control) -> String {
    let mut text = exposition(edge, fleet, control);
    text.truncate(text.len() - "# EOF\n".len());
    text.push_str(&edge.encode_latency_fine());
    text.push_str("# EOF\n");
    text
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = exposition(&state.edge, &state.fleet, &*state.control);
    // What became of the notifications (the watch's own counts, so not in what it samples).
    let notifications = state.watch.encode_notifier_metrics();
    if !notifications.is_empty() {
        body.truncate(body.len().saturating_sub("# EOF\n".len()));
        body.push_str(&notifications);
        body.push_str("# EOF\n");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn target_groups(State(state): State<AdminState>) -> Response {
    let groups: Vec<_> = state
        .edge
        .target_groups()
        .into_iter()
        .map(|g| {
            json!({
                "name": g.name,
                "algorithm": g.algorithm,
                "targets": g.targets.iter().map(|t| json!({
                    "addr": t.addr.to_string(),
                    "zone": t.zone,
                    "weight": t.weight,
                    "state": t.state.as_str(),
                    "in_flight": t.in_flight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "target_groups": groups })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    addr: String,
    zone: Option<String>,
    weight: Option<u32>,
}

async fn register(State(state): State<AdminState>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let body: RegisterBody = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let Ok(addr) = body.addr.parse::<SocketAddr>() else {
        return error(StatusCode::BAD_REQUEST, "addr must be ip:port, e.g. \"127.0.0.1:9003\"");
    };
    let weight = body.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return error(StatusCode::BAD_REQUEST, "weight must be between 1 and 1000");
    }
    let target = flotilla_config::TargetConfig { addr, zone: body.zone, weight };
    match state.edge.register(&name, target) {
        Ok(true) => {
            (StatusCode::CREATED, Json(json!({ "addr": addr.to_string(), "state": "initial" }))).into_response()
        }
        Ok(false) => (StatusCode::OK, Json(json!({ "addr": addr.to_string(), "updated": true }))).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

async fn deregister(State(state): State<AdminState>, Path((name, addr)): Path<(String, String)>) -> Response {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error(StatusCode::BAD_REQUEST, "target must be ip:port");
    };
    match state.edge.deregister(&name, addr) {
        Ok(()) => {
            (StatusCode::ACCEPTED, Json(json!({ "addr": addr.to_string(), "state": "draining" }))).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let control = state.control.clone();
    match tokio::task::spawn_blocking(move || control.reload()).await {
        Ok(Ok(())) => Json(json!({ "reloaded": true })).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidationBody {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

async fn cluster(State(state): State<AdminState>) -> Response {
    match &state.cluster {
        Some(c) => Json(c.status().await).into_response(),
        None => error(StatusCode::NOT_FOUND, "this node is not part of a cluster (no [cluster] in its config)"),
    }
}

fn invalidation_json(i: &flotilla_edge::Invalidation) -> serde_json::Value {
    let created = i.created_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "id": i.id,
        "status": "completed",
        "paths": i.paths,
        "tags": i.tags,
        "all": i.all,
        "created_at": time::rfc3339(created),
        "duration_ms": i.duration.as_secs_f64() * 1000.0,
    })
}

/// Applied on every worker before the 202 is sent (the store is shared).
async fn invalidate(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let body: InvalidationBody = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if body.paths.is_empty() && body.tags.is_empty() {
        return error(StatusCode::BAD_REQUEST, "give \"paths\" (e.g. [\"/img/*\"]) or \"tags\"");
    }
    if let Some(bad) = body.paths.iter().find(|p| !p.starts_with('/') || p[..p.len().saturating_sub(1)].contains('*')) {
        return error(StatusCode::BAD_REQUEST, &format!("path {bad:?} must start with '/' and may end with '*' only"));
    }
    applied_everywhere(&state, body.paths, body.tags, false).await
}

/// Applies an invalidation here, then (in a cluster) publishes it and waits for every live node.
/// The answer says honestly how far it got: `completed` (every live node applied it),
/// `incomplete` (named nodes had not acknowledged within `cluster.invalidation_wait`) or
/// `local` (Redis unreachable: applied here, journaled, published when Redis returns).
async fn applied_everywhere(state: &AdminState, paths: Vec<String>, tags: Vec<String>, all: bool) -> Response {
    let record = state.edge.invalidate(paths.clone(), tags.clone(), all);
    let mut body = invalidation_json(&record);
    if let Some(cluster) = &state.cluster {
        let outcome = cluster.invalidate(flotilla_cluster::InvalidationSpec { paths, tags, all }).await;
        let (status, detail) = match outcome {
            flotilla_cluster::Outcome::Published { id, applied, pending, waited } => (
                if pending.is_empty() { "completed" } else { "incomplete" },
                json!({
                    "id": id.to_string(),
                    "applied": applied,
                    "pending": pending,
                    "wait_ms": waited.as_secs_f64() * 1000.0,
                }),
            ),
            flotilla_cluster::Outcome::Journaled { error, queued } => (
                "local",
                json!({
                    "error": error,
                    "journaled": queued,
                    "note": "applied on this node only; it will be published to the other nodes when Redis answers again",
                }),
            ),
        };
        body["status"] = json!(status);
        body["cluster"] = detail;
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn invalidation(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match id.parse::<u64>().ok().and_then(|id| state.edge.invalidation(id)) {
        Some(i) => Json(invalidation_json(&i)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such invalidation (the last 1000 are kept)"),
    }
}

/// A deployment invalidates everything cached (CloudFront's "invalidate on deploy").
async fn deployment(State(state): State<AdminState>) -> Response {
    applied_everywhere(&state, vec![], vec![], true).await
}

#[cfg(test)]
mod tests;
