//! `flotilla demo-app`: a small app to put behind the edge in the quickstart and in tests.
//! Each endpoint exists to exercise one edge behaviour (balancing, health, CPU load, WebSockets,
//! caching headers, echoing what the target received), plus the faults the chaos suite needs:
//! `POST /chaos` makes an instance slow or failing, and `POST /orders` records each order it
//! applies in a journal shared by all instances, so a test can prove none was applied twice.
//!
//! Its own crate so that a production build of `flotilla` can leave it out (the binary links it
//! through its `demo` feature, on by default). This file holds the app's state and its routes;
//! the handlers live by job: `target.rs` (what any target does), `chaos.rs` (injected faults and
//! the orders journal), `cacheable.rs` (caching headers, static assets, photos), `stream.rs`
//! (unbuffered bodies).

mod cacheable;
mod chaos;
mod stream;
mod target;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::routing::{any, get, post};
use axum::Router;

use cacheable::{cached, photo, photos_served, static_file};
use chaos::{chaos, inject_fault, order};
use stream::{bytes_response, sink};
use target::{echo, health, index, slow, status, toggle_health, whoami, work, ws};

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

/// Serves the demo app on `bind:port` until SIGTERM or Ctrl-C.
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

/// `?ms=N`, the wait or work several endpoints take.
#[derive(serde::Deserialize)]
struct Ms {
    ms: Option<u64>,
}
