//! `/api/v1/groups`: auto scaling groups, their instances, desired capacity and activity.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_fleet::FleetError;
use serde::Deserialize;
use serde_json::json;

use crate::{error, json_body, unauthorized, AdminState};

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
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
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

fn fleet_error(e: FleetError) -> Response {
    let status = match e {
        FleetError::UnknownGroup(_) => StatusCode::NOT_FOUND,
        FleetError::OutOfBounds { .. } | FleetError::BudgetCap { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, &e.to_string())
}
