//! `flotilla demo-app`: a small app to put behind the edge in the quickstart and in tests.
//! Each endpoint exists to exercise one edge behaviour (balancing, health, CPU load, WebSockets,
//! caching headers, echoing what the target received), plus the faults the chaos suite needs:
//! `POST /chaos` makes an instance slow or failing, and `POST /orders` records each order it
//! applies in a journal shared by all instances, so a test can prove none was applied twice.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
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
    /// Injected fault: every app request waits this long first (0 = none).
    fault_delay_ms: AtomicU64,
    /// Injected fault: every app request answers this status instead (0 = none).
    fault_status: AtomicU16,
    /// Where applied orders are appended, one id per line; shared by instances on one host.
    journal: Option<Mutex<std::fs::File>>,
    orders: AtomicU64,
}

type Shared = Arc<App>;

/// What `flotilla demo-app` was started with besides its address and id.
#[derive(Default)]
pub struct Options {
    pub photos: Option<std::path::PathBuf>,
    pub journal: Option<std::path::PathBuf>,
}

pub async fn run(bind: IpAddr, port: u16, id: String, opts: Options) -> anyhow::Result<()> {
    let journal = match &opts.journal {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("demo-app: cannot open journal {}", path.display()))?,
        )),
        None => None,
    };
    let app = Arc::new(App {
        id: id.clone(),
        healthy: AtomicBool::new(true),
        requests: AtomicU64::new(0),
        cached_hits: AtomicU64::new(0),
        photos: opts.photos,
        photo_requests: AtomicU64::new(0),
        fault_delay_ms: AtomicU64::new(0),
        fault_status: AtomicU16::new(0),
        journal,
        orders: AtomicU64::new(0),
    });
    // Faults apply to the app's own endpoints, never to /health or /chaos: a target that lies
    // to health checks is exactly what passive checks and retries must cope with.
    let faulty = Router::new()
        .route("/", get(index))
        .route("/whoami", get(whoami))
        .route("/work", get(work))
        .route("/slow", get(slow))
        .route("/status/{code}", any(status))
        .route("/echo", any(echo))
        .route("/ws", get(ws))
        .route("/cached", any(cached))
        .route("/static/{*file}", get(static_file))
        .route("/photos/{file}", get(photo))
        .route("/photos-served", get(photos_served))
        .route("/orders", post(order))
        .route("/sink", post(sink))
        .route("/bytes", get(bytes_response))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), inject_fault));
    let router = Router::new()
        .route("/health", get(health))
        .route("/toggle-health", post(toggle_health))
        .route("/chaos", post(chaos))
        .merge(faulty)
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
struct Fault {
    delay_ms: Option<u64>,
    status: Option<u16>,
}

/// `POST /chaos?delay_ms=N&status=S`: from now on every app request waits N ms (capped at 60 s)
/// and/or answers S (a 4xx/5xx; 0 turns it off) without doing its work.
async fn chaos(State(app): State<Shared>, Query(f): Query<Fault>) -> Response {
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

async fn inject_fault(State(app): State<Shared>, req: Request, next: Next) -> Response {
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
async fn order(State(app): State<Shared>, Query(q): Query<Ms>, headers: HeaderMap) -> Response {
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

/// `POST /sink`: reads the body as it streams in, keeping none of it, and answers how many bytes
/// arrived — an upload target that costs the app no memory, so a test measures the edge's.
async fn sink(body: axum::body::Body) -> Response {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("body failed after {n} bytes: {e}\n")).into_response(),
        }
    }
    format!("{n}\n").into_response()
}

#[derive(serde::Deserialize)]
struct Size {
    n: Option<u64>,
}

/// `GET /bytes?n=N`: N bytes (default 1 MiB, capped at 4 GiB) generated as the client reads
/// them, so a slow reader holds the response back instead of the app buffering it.
async fn bytes_response(Query(q): Query<Size>) -> Response {
    let n = q.n.unwrap_or(1 << 20).min(4 << 30);
    let mut resp =
        axum::body::Body::new(Repeat { left: n, chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]) }).into_response();
    resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

struct Repeat {
    left: u64,
    chunk: bytes::Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= take as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
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
    // `cookie=NAME` personalises the page by that cookie, as frameworks do by default: no
    // Cache-Control unless `cc` asks for one.
    let greeting = q.get("cookie").map_or(String::new(), |name| {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(name.as_str())?.strip_prefix('='))
            .unwrap_or("anonymous");
        format!("hello {value}\n")
    });
    let mut resp = format!("{} {} {n}\n{greeting}{}", app.id, method, "flotilla ".repeat(pad / 9)).into_response();
    let h = resp.headers_mut();
    if let Some(v) = q.get("set-cookie").and_then(|v| header::HeaderValue::from_str(v).ok()) {
        h.append(header::SET_COOKIE, v);
    }
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
