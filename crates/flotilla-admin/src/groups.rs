//! `/api/v1/groups`: auto scaling groups, their instances, desired capacity and activity.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_fleet::{FleetError, RefreshOptions};
use serde::Deserialize;
use serde_json::json;

use crate::{error, json_body, AdminState};

pub(crate) async fn list(State(state): State<AdminState>) -> Response {
    Json(json!({ "groups": state.fleet.groups() })).into_response()
}

pub(crate) async fn show(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.fleet.group(&name) {
        Ok(g) => Json(g).into_response(),
        Err(e) => fleet_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredBody {
    desired: u32,
}

/// `PUT /api/v1/groups/{name}/desired` with `{"desired": N}` (or a bare number).
pub(crate) async fn set_desired(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let desired = match json_body::<DesiredBody>(&body) {
        Ok(b) => b.desired,
        Err(e) => match json_body::<u32>(&body) {
            Ok(n) => n,
            Err(_) => return error(StatusCode::BAD_REQUEST, &format!("{e}; expected {{\"desired\": N}}")),
        },
    };
    match state.fleet.set_desired(&name, desired) {
        Ok(g) => Json(g).into_response(),
        Err(e) => fleet_error(e),
    }
}

pub(crate) async fn activity(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.fleet.activity(&name) {
        Ok(a) => Json(json!({ "group": name, "activity": a })).into_response(),
        Err(e) => fleet_error(e),
    }
}

/// `POST /api/v1/groups/{name}/refresh` with optional `{"min_healthy_percentage": 90,
/// "checkpoints": [50], "checkpoint_delay": "60s", "auto_rollback": true}` → 202.
pub(crate) async fn start_refresh(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let opts = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshOptions::default()
    } else {
        match json_body::<RefreshOptions>(&body) {
            Ok(o) => o,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        }
    };
    match state.fleet.start_refresh(&name, opts) {
        Ok(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Err(e) => fleet_error(e),
    }
}

pub(crate) async fn show_refresh(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.fleet.refresh(&name) {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "this group has had no refresh"),
        Err(e) => fleet_error(e),
    }
}

pub(crate) async fn cancel_refresh(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.fleet.cancel_refresh(&name) {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "this group has had no refresh"),
        Err(e) => fleet_error(e),
    }
}

fn fleet_error(e: FleetError) -> Response {
    let status = match e {
        FleetError::UnknownGroup(_) => StatusCode::NOT_FOUND,
        FleetError::RefreshRunning(_) | FleetError::NotLeader(_) => StatusCode::CONFLICT,
        FleetError::BadRequest(_) => StatusCode::BAD_REQUEST,
        FleetError::OutOfBounds { .. } | FleetError::ScaleOutBlocked(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, &e.to_string())
}
