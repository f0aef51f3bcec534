//! The dashboard: one self-contained HTML page (`dashboard.html`, compiled in — no build step, no
//! CDN) at `/`, and `/api/v1/dashboard`, the one call it polls. The data call needs a token
//! when one is configured, the admin or the read-only one (the page asks for it and keeps it for
//! the browser session); the page itself holds no data, so it is served to anyone.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{error, AdminState};

const PAGE: &str = include_str!("dashboard.html");
/// How far back the charts reach.
const SPAN_SECS: f64 = 15.0 * 60.0;
/// Points per chart at most.
const MAX_POINTS: f64 = 180.0;

pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("content-security-policy"), "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
        ],
        PAGE,
    )
        .into_response()
}

fn series(state: &AdminState, name: &str, labels: &[(&str, &str)], from: f64, to: f64, step: f64) -> Vec<[f64; 2]> {
    let filter: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    state.watch.query(name, &filter, from, to, Some(step)).into_iter().map(|p| [p.t, p.v]).collect()
}

/// Everything the page shows, in one answer.
pub(crate) async fn data(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.access.has_tokens() && !state.access.reader(&headers) {
        return error(StatusCode::UNAUTHORIZED, "the dashboard needs the admin or the read-only token");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let from = now - SPAN_SECS;
    let step = (SPAN_SECS / MAX_POINTS).max(1.0);
    let target_groups: Vec<Value> = state
        .edge
        .target_groups()
        .into_iter()
        .map(|g| {
            json!({
                "name": g.name,
                "targets": g.targets.iter().map(|t| json!({
                    "addr": t.addr.to_string(), "state": t.state.as_str(), "zone": t.zone, "in_flight": t.in_flight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut latency = serde_json::Map::new();
    let mut classes = serde_json::Map::new();
    for (key, name) in [("p50", "http_latency_p50"), ("p95", "http_latency_p95"), ("p99", "http_latency_p99")] {
        latency.insert(key.into(), json!(series(&state, name, &[], from, now, step)));
    }
    for class in ["2xx", "4xx", "5xx"] {
        classes
            .insert(class.into(), json!(series(&state, &format!("http_requests_{class}_rate"), &[], from, now, step)));
    }
    // Cache hit ratio per step: hits / all results.
    let hits = series(&state, "flotilla_cache_requests_rate", &[("result", "hit")], from, now, step);
    let all = series(&state, "flotilla_cache_requests_rate", &[], from, now, step);
    let hit_ratio: Vec<[f64; 2]> = all
        .iter()
        .filter(|p| p[1] > 0.0)
        .map(|p| [p[0], hits.iter().find(|h| h[0] == p[0]).map_or(0.0, |h| h[1]) / p[1]])
        .collect();
    let groups = state.fleet.groups();
    let mut cpu = serde_json::Map::new();
    for g in &groups {
        for i in &g.instances {
            let s = series(
                &state,
                "flotilla_instance_cpu_percent",
                &[("group", &g.name), ("instance", &i.id)],
                from,
                now,
                step,
            );
            cpu.insert(i.id.clone(), json!(s));
        }
    }
    Json(json!({
        "time": now,
        "target_groups": target_groups,
        "groups": groups,
        "alarms": state.watch.alarms(),
        "slos": state.watch.slos(),
        "budget": state.watch.budget(),
        "series": {
            "requests": series(&state, "http_requests_rate", &[], from, now, step),
            "classes": classes,
            "latency": latency,
            "cache_hit_ratio": hit_ratio,
            "cpu": cpu,
        },
    }))
    .into_response()
}
