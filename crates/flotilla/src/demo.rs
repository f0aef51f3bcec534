//! `flotilla demo-app`: a small app to put behind the edge in the quickstart and in tests.
//! Each endpoint exists to exercise one edge behaviour (balancing, health, CPU load, WebSockets,
//! caching headers, echoing what the target received).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

struct App {
    id: String,
    healthy: AtomicBool,
    requests: AtomicU64,
    cached_hits: AtomicU64,
    photos: Option<std::path::PathBuf>,
    photo_requests: AtomicU64,
}

type Shared = Arc<App>;

pub async fn run(bind: IpAddr, port: u16, id: String, photos: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let app = Arc::new(App {
        id: id.clone(),
        healthy: AtomicBool::new(true),
        requests: AtomicU64::new(0),
        cached_hits: AtomicU64::new(0),
        photos,
        photo_requests: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/whoami", get(whoami))
        .route("/health", get(health))
        .route("/toggle-health", post(toggle_health))
        .route("/work", get(work))
        .route("/slow", get(slow))
        .route("/status/{code}", any(status))
        .route("/echo", any(echo))
        .route("/ws", get(ws))
        .route("/cached", any(cached))
        .route("/static/{*file}", get(static_file))
        .route("/photos/{file}", get(photo))
        .route("/photos-served", get(photos_served))
        .with_state(app);
    let addr = SocketAddr::new(bind, port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("demo-app: cannot listen on {addr}"))?;
    tracing::info!(%addr, id, "demo app listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn index(State(app): State<Shared>) -> Html<String> {
    app.requests.fetch_add(1, Ordering::Relaxed);
    Html(format!(
        "<!doctype html><html><head><title>Flotilla demo: {id}</title><link rel=stylesheet href=/static/app.css></head>\
         <body><h1>Hello from <code>{id}</code></h1><p>Served by a Flotilla demo app.</p></body></html>\n",
        id = html_escape(&app.id)
    ))
}

async fn whoami(State(app): State<Shared>) -> String {
    app.requests.fetch_add(1, Ordering::Relaxed);
    app.id.clone()
}

async fn health(State(app): State<Shared>) -> Response {
    let ok = app.healthy.load(Ordering::Relaxed);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ok { "ok" } else { "failing" }, "id": app.id }))).into_response()
}

/// Flips /health between 200 and 503, so health checks can be tested.
async fn toggle_health(State(app): State<Shared>) -> Json<serde_json::Value> {
    let now = !app.healthy.fetch_xor(true, Ordering::Relaxed);
    Json(json!({ "healthy": now, "id": app.id }))
}

#[derive(serde::Deserialize)]
struct Ms {
    ms: Option<u64>,
}

/// Burns `ms` milliseconds of CPU (capped at 10 s) on the blocking pool.
async fn work(State(app): State<Shared>, Query(q): Query<Ms>) -> String {
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
async fn slow(State(app): State<Shared>, Query(q): Query<Ms>) -> String {
    let ms = q.ms.unwrap_or(1000).min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("{} slept {ms} ms\n", app.id)
}

async fn status(State(app): State<Shared>, Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (code, format!("{} answered {}\n", app.id, code.as_u16())).into_response()
}

/// Returns what this target received, so tests can see exactly what the edge forwarded.
async fn echo(
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

/// A response whose caching headers come from the query (`cc`, `vary`, `tag`, `etag`, `ms` to
/// delay, `pad` bytes of compressible filler), and whose body counts the requests this endpoint has served, so a test can tell an
/// origin fetch from a cache hit.
async fn cached(
    State(app): State<Shared>,
    method: Method,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let n = app.cached_hits.fetch_add(1, Ordering::Relaxed) + 1;
    if let (Some(etag), Some(inm)) = (q.get("etag"), headers.get(header::IF_NONE_MATCH)) {
        if inm.as_bytes() == etag.as_bytes() {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().insert("x-origin-count", n.into());
            if let Some(v) = q.get("cc").and_then(|v| header::HeaderValue::from_str(v).ok()) {
                resp.headers_mut().insert(header::CACHE_CONTROL, v);
            }
            return resp;
        }
    }
    if let Some(ms) = q.get("ms").and_then(|m| m.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
    let pad = q.get("pad").and_then(|p| p.parse::<usize>().ok()).unwrap_or(0).min(1 << 20);
    let mut resp = format!("{} {} {n}\n{}", app.id, method, "flotilla ".repeat(pad / 9)).into_response();
    let h = resp.headers_mut();
    for (param, name) in [("cc", header::CACHE_CONTROL), ("vary", header::VARY), ("etag", header::ETAG)] {
        if let Some(v) = q.get(param).and_then(|v| header::HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    if let Some(v) = q.get("tag").and_then(|v| header::HeaderValue::from_str(v).ok()) {
        h.insert("surrogate-key", v);
    }
    resp
}

async fn ws(upgrade: WebSocketUpgrade, State(app): State<Shared>) -> Response {
    upgrade.on_upgrade(move |socket| echo_socket(socket, app))
}

async fn echo_socket(mut socket: WebSocket, _app: Shared) {
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

const STATIC: [(&str, &str, &str); 3] = [
    ("app.css", "text/css; charset=utf-8", "body{font-family:system-ui,sans-serif;margin:3rem;color:#123}\nh1{color:#0a5}\n"),
    ("app.js", "text/javascript; charset=utf-8", "document.documentElement.dataset.flotilla = 'demo';\n"),
    (
        "logo.svg",
        "image/svg+xml",
        "<svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'><circle cx='32' cy='32' r='28' fill='#0a5'/></svg>\n",
    ),
];

async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((_, ctype, body)) = STATIC.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let etag = format!("\"{:x}\"", body.len() * 31 + file.len());
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CACHE_CONTROL, "public, max-age=3600".into()),
            (header::ETAG, etag),
        ],
        *body,
    )
        .into_response()
}

/// A file from `--photos DIR` by its bare name, with long freshness and a Surrogate-Key, as an
/// app would serve its uploads.
async fn photo(State(app): State<Shared>, Path(file): Path<String>) -> Response {
    app.photo_requests.fetch_add(1, Ordering::Relaxed);
    let Some(dir) = app.photos.as_ref() else {
        return (StatusCode::NOT_FOUND, "start with --photos DIR\n").into_response();
    };
    if file.starts_with('.') || file.contains(['/', '\\']) {
        return (StatusCode::NOT_FOUND, "no such photo\n").into_response();
    }
    let ctype = match file.rsplit('.').next().unwrap_or("") {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    };
    match tokio::task::spawn_blocking({
        let path = dir.join(&file);
        move || std::fs::read(path)
    })
    .await
    {
        Ok(Ok(bytes)) => {
            let stem = file.split('.').next().unwrap_or("").to_string();
            (
                [
                    (header::CONTENT_TYPE, ctype.to_string()),
                    (header::CACHE_CONTROL, "public, max-age=3600".into()),
                    (header::HeaderName::from_static("surrogate-key"), format!("photos photo-{stem}")),
                ],
                bytes,
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such photo\n").into_response(),
    }
}

async fn photos_served(State(app): State<Shared>) -> String {
    format!("{}\n", app.photo_requests.load(Ordering::Relaxed))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
