//! The faults the reliability suite injects: `POST /chaos` makes an instance slow or failing
//! (every app endpoint, never `/health` or `/chaos`), and `POST /orders` journals each order it
//! applies in a file shared by every instance, so a test can prove none was applied twice.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::{Ms, Shared};

#[derive(serde::Deserialize)]
pub(crate) struct Fault {
    delay_ms: Option<u64>,
    status: Option<u16>,
}

/// `POST /chaos?delay_ms=N&status=S`: from now on every app request waits N ms (capped at 60 s)
/// and/or answers S (a 4xx/5xx; 0 turns it off) without doing its work.
pub(crate) async fn chaos(State(app): State<Shared>, Query(f): Query<Fault>) -> Response {
    if let Some(s) = f.status.filter(|s| *s != 0 && !(400..=599).contains(s)) {
        return (StatusCode::BAD_REQUEST, format!("status must be 0 or 400-599, not {s}\n")).into_response();
    }
    if let Some(ms) = f.delay_ms {
        app.fault_delay_ms.store(ms.min(60_000), Ordering::Relaxed);
    }
    if let Some(s) = f.status {
        app.fault_status.store(s, Ordering::Relaxed);
    }
    Json(json!({
        "id": app.id,
        "delay_ms": app.fault_delay_ms.load(Ordering::Relaxed),
        "status": app.fault_status.load(Ordering::Relaxed),
    }))
    .into_response()
}

pub(crate) async fn inject_fault(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let delay = app.fault_delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = app.fault_status.load(Ordering::Relaxed);
    if let Some(code) = StatusCode::from_u16(status).ok().filter(|_| status != 0) {
        return (code, format!("{} injected {status}\n", app.id)).into_response();
    }
    next.run(req).await
}

/// `POST /orders` with an `x-order-id` header: applies the order once (appends the id to the
/// journal), then holds the answer `ms` milliseconds (default 0, capped at 10 s) before the 201,
/// so a kill can land between applying and answering: the non-idempotent request the chaos
/// suite counts.
pub(crate) async fn order(State(app): State<Shared>, Query(q): Query<Ms>, headers: HeaderMap) -> Response {
    let Some(id) = headers.get("x-order-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "x-order-id header required\n").into_response();
    };
    if id.contains(['\n', '\r']) {
        return (StatusCode::BAD_REQUEST, "bad x-order-id\n").into_response();
    }
    if let Some(journal) = &app.journal {
        // One write(2) per line on an O_APPEND file: lines from concurrent instances never mix.
        let line = format!("{id} {}\n", app.id);
        let written = journal.lock().map_err(|_| ()).and_then(|mut f| f.write_all(line.as_bytes()).map_err(|_| ()));
        if written.is_err() {
            return (StatusCode::INTERNAL_SERVER_ERROR, "journal write failed\n").into_response();
        }
    }
    let n = app.orders.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0).min(10_000))).await;
    (StatusCode::CREATED, format!("{} applied order {id} ({n} so far)\n", app.id)).into_response()
}
