//! `/api/v1/metrics`, `/api/v1/alarms`, `/api/v1/slos` and `/api/v1/notifiers`: the watch's
//! series, alarms, SLOs and notifiers.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::{error, AdminState};

pub(crate) async fn names(State(state): State<AdminState>) -> Response {
    let metrics: Vec<_> = state
        .watch
        .metric_names()
        .into_iter()
        .map(|(name, sets)| {
            let labels: Vec<BTreeMap<String, String>> = sets.into_iter().map(|l| l.into_iter().collect()).collect();
            json!({ "name": name, "series": labels })
        })
        .collect();
    Json(json!({ "metrics": metrics })).into_response()
}

#[derive(Deserialize)]
pub(crate) struct QueryParams {
    name: Option<String>,
    /// `k=v,k2=v2`
    labels: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// `GET /api/v1/metrics/query?name=http_requests_rate&labels=target_group=web&from=-15m&to=now&step=30s`
pub(crate) async fn query(State(state): State<AdminState>, Query(q): Query<QueryParams>) -> Response {
    let Some(name) = q.name.filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "name is required, e.g. ?name=http_requests_rate");
    };
    let mut labels = BTreeMap::new();
    for pair in q.labels.iter().flat_map(|l| l.split(',')).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return error(StatusCode::BAD_REQUEST, &format!("label {pair:?} must be key=value"));
        };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let time = |v: &Option<String>, default: f64, what: &str| -> Result<f64, String> {
        match v.as_deref() {
            None | Some("now") => Ok(default),
            Some(s) if s.starts_with('-') => flotilla_config::units::parse_duration(&s[1..])
                .map(|d| now - d.as_secs_f64())
                .map_err(|e| format!("{what}: {e}")),
            Some(s) => s.parse::<f64>().map_err(|_| format!("{what} must be Unix seconds, \"now\" or \"-15m\"")),
        }
    };
    let (from, to) = match (time(&q.from, now - 3600.0, "from"), time(&q.to, now, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let step = match q.step.as_deref().map(flotilla_config::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d.as_secs_f64()),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("step: {e}")),
    };
    let points = state.watch.query(&name, &labels, from, to, step);
    Json(json!({ "name": name, "labels": labels, "from": from, "to": to, "points": points })).into_response()
}

pub(crate) async fn alarms(State(state): State<AdminState>) -> Response {
    Json(json!({ "alarms": state.watch.alarms() })).into_response()
}

pub(crate) async fn slos(State(state): State<AdminState>) -> Response {
    Json(json!({ "slos": state.watch.slos() })).into_response()
}

pub(crate) async fn budget(State(state): State<AdminState>) -> Response {
    match state.watch.budget() {
        Some(b) => Json(b).into_response(),
        None => error(StatusCode::NOT_FOUND, "no [budget] in the config"),
    }
}

/// The notifiers and what became of their notifications; the webhook as scheme and host only
/// (a Slack URL's path is its token), never a routing key.
pub(crate) async fn notifiers(State(state): State<AdminState>) -> Response {
    Json(json!({ "notifiers": state.watch.notifiers() })).into_response()
}
