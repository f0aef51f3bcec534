//! What any target does, for balancing, health-check and protocol tests: say who it is, answer
//! health checks (and flip them), burn CPU, answer slowly or with a chosen status, echo what it
//! received, echo WebSocket messages.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::{Ms, Shared};

pub(crate) async fn index(State(app): State<Shared>) -> Html<String> {
    app.requests.fetch_add(1, Ordering::Relaxed);
    Html(format!(
        "<!doctype html><html><head><title>Flotilla demo: {id}</title><link rel=stylesheet href=/static/app.css></head>\
         <body><h1>Hello from <code>{id}</code></h1><p>Served by a Flotilla demo app.</p></body></html>\n",
        id = html_escape(&app.id)
    ))
}

pub(crate) async fn whoami(State(app): State<Shared>) -> String {
    app.requests.fetch_add(1, Ordering::Relaxed);
    app.id.clone()
}

pub(crate) async fn health(State(app): State<Shared>) -> Response {
    let ok = app.healthy.load(Ordering::Relaxed);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ok { "ok" } else { "failing" }, "id": app.id }))).into_response()
}

/// Flips /health between 200 and 503, so health checks can be tested.
pub(crate) async fn toggle_health(State(app): State<Shared>) -> Json<serde_json::Value> {
    let now = !app.healthy.fetch_xor(true, Ordering::Relaxed);
    Json(json!({ "healthy": now, "id": app.id }))
}

/// Burns `ms` milliseconds of CPU (capped at 10 s) on the blocking pool.
pub(crate) async fn work(State(app): State<Shared>, Query(q): Query<Ms>) -> String {
    let ms = q.ms.unwrap_or(10).min(10_000);
    let _ = tokio::task::spawn_blocking(move || {
        let end = Instant::now() + Duration::from_millis(ms);
        let mut x: u64 = 1;
        while Instant::now() < end {
            for _ in 0..1000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        }
    })
    .await;
    format!("{} worked {ms} ms\n", app.id)
}

/// Sleeps `ms` milliseconds (capped at 60 s) before answering: a slow request, not CPU.
pub(crate) async fn slow(State(app): State<Shared>, Query(q): Query<Ms>) -> String {
    let ms = q.ms.unwrap_or(1000).min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("{} slept {ms} ms\n", app.id)
}

pub(crate) async fn status(State(app): State<Shared>, Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (code, format!("{} answered {}\n", app.id, code.as_u16())).into_response()
}

/// Returns what this target received, so tests can see exactly what the edge forwarded.
pub(crate) async fn echo(
    State(app): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<serde_json::Value> {
    let headers: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    Json(json!({
        "id": app.id,
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    }))
}

pub(crate) async fn ws(upgrade: WebSocketUpgrade, State(app): State<Shared>) -> Response {
    upgrade.on_upgrade(move |socket| echo_socket(socket, app))
}

pub(crate) async fn echo_socket(mut socket: WebSocket, _app: Shared) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Ping(p) => Message::Pong(p),
            Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
