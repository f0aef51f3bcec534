//! `[images]`: `{route}/{preset}/{path}` answered with a resized, re-encoded variant of the
//! original at `{path}`.
//!
//! The image route is a cached route whose *origin* is the transformer: [`serve`] normalises
//! `Accept` to the one format it negotiated (so the cache holds at most one variant per format
//! under `Vary: Accept`) and hands the request to the cache layer, which coalesces concurrent
//! misses and stores results; on a miss the cache calls [`render`], which fetches the original
//! (from the target group through the normal proxy path, or from a directory), and runs the
//! transform on the bounded image pool, off the async runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flotilla_cache::{Behavior, KeyPolicy, QueryKey};
use flotilla_config::{ImageFormat, ImageSource, ImagesConfig};
use flotilla_images::url::{self as image_url, ImageUrl, Variant};
use flotilla_images::{ImageError, Limits, Spec, Target};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::body::{collect_bounded, json_str, Body, Collected};
use crate::context::{Call, Outcome};
use crate::error::ProxyError;
use crate::files::ReadError;
use crate::group::TargetGroup;
use crate::metrics::{EdgeMetrics, ImageLabels, RefusalLabels};
use crate::route::CacheRule;
use crate::Shared;

/// The transform pool: shared by every worker and kept across reloads, so a reload cannot
/// double the CPU the images may take.
///
/// Transforms run on `workers` dedicated threads rather than tokio's blocking pool: the same few
/// threads keep their allocator heaps warm, where hundreds of short-lived blocking threads each
/// kept their own and RSS grew with them.
pub(crate) struct Pool {
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
    workers: usize,
    jobs: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Pool {
    pub(crate) fn new(cfg: Option<&ImagesConfig>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cfg.map_or(cpus, |c| if c.workers == 0 { cpus } else { c.workers });
        Pool {
            permits: Semaphore::new(workers),
            waiting: AtomicUsize::new(0),
            queue: cfg.map_or(64, |c| c.queue),
            workers,
            jobs: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` on an image thread (started on first use). Callers hold a permit, so at most
    /// `workers` jobs are ever queued here.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let rx = Arc::new(std::sync::Mutex::new(rx));
            for i in 0..self.workers {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new().name(format!("flotilla-image-{i}")).spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        // transform catches codec panics itself; this keeps the thread either way.
                        Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                        Err(_) => return,
                    }
                });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start an image thread");
                }
            }
            tx
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        jobs.send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .ok()?;
        rx.await.ok()
    }
}

/// One request's place in the queue, given back however the request ends (a client that hangs
/// up while waiting must not leave the count high).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// How many were waiting before this one.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        Waiting { ahead: count.fetch_add(1, Ordering::AcqRel), count }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `[images]` as the request path uses it; rebuilt on reload.
pub(crate) struct ImageService {
    pub(crate) cfg: ImagesConfig,
    source: Source,
    /// The authority variants are keyed under and originals are asked for with: fixed, so
    /// neither a client's `Host` nor its port can make a new variant (a new transform each).
    pub(crate) source_host: String,
    pub(crate) signing_key: Option<Vec<u8>>,
    /// The cache behaviour variants are stored under.
    pub(crate) rule: Arc<CacheRule>,
}

enum Source {
    Group(Arc<TargetGroup>),
    Files(Arc<crate::files::FilesOrigin>),
}

impl ImageService {
    pub(crate) fn new(
        cfg: &ImagesConfig,
        groups: &std::collections::HashMap<String, Arc<TargetGroup>>,
        metrics: &EdgeMetrics,
    ) -> Option<Self> {
        let source = match &cfg.source {
            ImageSource::TargetGroup(name) => Source::Group(groups.get(name)?.clone()),
            ImageSource::Files(dir) => Source::Files(Arc::new(crate::files::FilesOrigin::new(dir))),
        };
        let source_host = cfg.source_host.clone().unwrap_or_else(|| match &source {
            Source::Group(g) => g.config().targets.first().map_or("localhost".into(), |t| t.addr.to_string()),
            Source::Files(_) => "localhost".into(),
        });
        // Variants live as long as the original says, or `ttl`; a failing origin is covered
        // by the stored copy for a day, and a stale one is refreshed in the background.
        let behavior = Behavior {
            min_ttl: std::time::Duration::ZERO,
            default_ttl: cfg.ttl,
            max_ttl: std::time::Duration::from_secs(365 * 86_400),
            stale_while_revalidate: std::time::Duration::from_secs(60),
            stale_if_error: std::time::Duration::from_secs(86_400),
            error_ttl: flotilla_cache::freshness::DEFAULT_ERROR_TTL,
        };
        let key = KeyPolicy { query: QueryKey::All, headers: vec![], cookies: vec![] };
        let rule = Arc::new(CacheRule::with(behavior, key, false, "images", metrics));
        Some(Self {
            cfg: cfg.clone(),
            source,
            source_host,
            signing_key: cfg.signing_key.as_ref().map(|k| k.as_bytes().to_vec()),
            rule,
        })
    }

    /// The target group originals come from, if they do not come from a directory.
    pub(crate) fn source_group(&self) -> Option<&Arc<TargetGroup>> {
        match &self.source {
            Source::Group(g) => Some(g),
            Source::Files(_) => None,
        }
    }

    /// The part of `path` after the route prefix, if this is an image URL.
    pub(crate) fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.cfg.route.as_str()).filter(|r| r.starts_with('/'))
    }

    pub(crate) fn parse(&self, path: &str, query: Option<&str>) -> Result<ImageUrl, image_url::UrlError> {
        let rest = self.rest(path).unwrap_or("");
        image_url::parse(rest, query, &self.cfg.presets, self.signing_key.as_deref())
    }

    /// The format, quality and box a variant URL asks for, given the negotiated format.
    fn spec(&self, variant: &Variant, negotiated: ImageFormat) -> Spec {
        let (target, quality, format) = match variant {
            Variant::Preset(name) => {
                let p = self.cfg.presets.get(name);
                let target = p
                    .map_or(Target { width: None, height: None, fit: Default::default(), upscale: false }, |p| {
                        Target { width: p.width, height: p.height, fit: p.fit, upscale: p.upscale }
                    });
                (target, p.and_then(|p| p.quality), negotiated)
            }
            Variant::Adhoc(a) => (a.target, a.quality, a.format.unwrap_or(negotiated)),
        };
        let q = &self.cfg.quality;
        let default_quality = match format {
            ImageFormat::Jpeg => q.jpeg,
            ImageFormat::Webp => q.webp,
            ImageFormat::Avif => q.avif,
        };
        Spec { target, format, quality: quality.unwrap_or(default_quality), avif_speed: self.cfg.avif_speed }
    }
}

/// A place in the bounded image queue and then a worker: only `workers` originals are ever in
/// memory at once, whatever the flood (waiting requests hold nothing but their connection).
/// `Err`: the 503 to send when the queue is full.
async fn admit<'p>(cx: &Call<'_>, pool: &'p Pool) -> Result<tokio::sync::SemaphorePermit<'p>, Response<Body>> {
    let waiting = Waiting::enter(&pool.waiting);
    if waiting.ahead >= pool.queue {
        refused(cx.shared, "busy");
        let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the image queue is full; try again");
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(resp);
    }
    let permit = pool.permits.acquire().await;
    drop(waiting);
    permit.map_err(|_| json_error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the image pool is shutting down"))
}

/// The cache layer's origin for image URLs: fetch the original, transform, answer.
pub(crate) async fn render<B>(
    cx: Call<'_>,
    svc: &Arc<ImageService>,
    req: Request<B>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let (parts, _body) = req.into_parts();
    let (variant, path) = match svc.parse(parts.uri.path(), parts.uri.query()) {
        Ok(ImageUrl::Variant { variant, path }) => (variant, path),
        Ok(ImageUrl::Srcset { path, html }) => return srcset(cx, svc, &path, html, out).await,
        Err(_) => return Ok(json_error(StatusCode::NOT_FOUND, "not_found", "not an image variant URL")),
    };
    let negotiated = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|m| m.strip_prefix("image/"))
        .and_then(ImageFormat::parse)
        .unwrap_or(ImageFormat::Jpeg);
    let spec = svc.spec(&variant, negotiated);
    let metrics = &cx.shared.metrics;
    let preset = match &variant {
        Variant::Preset(name) => name.clone(),
        Variant::Adhoc(_) => "adhoc".to_string(),
    };
    let pool = &cx.shared.image_pool;
    let _permit = match admit(&cx, pool).await {
        Ok(p) => p,
        Err(resp) => return Ok(resp),
    };
    let original = match fetch(cx, svc, &path, out).await? {
        Ok(o) => o,
        Err(resp) => return Ok(resp),
    };
    let limits = Limits { max_pixels: svc.cfg.max_source_pixels, max_bytes: svc.cfg.max_source_bytes };
    let started = Instant::now();
    let body = original.body.clone();
    let job_spec = spec.clone();
    let result = pool
        .run(move || flotilla_images::transform(&body, &job_spec, &limits))
        .await
        .unwrap_or_else(|| Err(ImageError::Internal("the image thread stopped".into())));
    let elapsed = started.elapsed();
    match result {
        Err(e) => {
            refused(cx.shared, e.reason());
            tracing::info!(path = %path, error = %e, "image refused");
            let mut resp = json_error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                e.reason(),
                &e.to_string(),
            );
            if e.status() < 500 {
                // The same bad original would fail the same way: let the cache absorb retries.
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
            }
            Ok(resp)
        }
        Ok(img) => {
            let labels = ImageLabels { preset, format: img.format.name() };
            metrics.image_transforms.get_or_create(&labels).inc();
            metrics.image_seconds.get_or_create(&labels).inc_by(elapsed.as_secs_f64());
            metrics.image_bytes_in.inc_by(original.body.len() as u64);
            metrics.image_bytes_out.get_or_create(&labels).inc_by(img.bytes.len() as u64);
            out.source = crate::metrics::Source::Target;
            Ok(variant_response(img, &original.headers, svc))
        }
    }
}

/// The original's bytes and the headers worth carrying over to its variants.
struct Original {
    body: Bytes,
    headers: HeaderMap,
}

/// Reads the original, bounded by `max_source_bytes` and, head and body together, by
/// `images.source_timeout` (a stalled origin must not hold a worker). The inner `Err` is a
/// response to send as is (not found, too large, too slow, origin error). The original is
/// asked for by its path alone: nothing of the client's query reaches the origin.
async fn fetch(
    cx: Call<'_>,
    svc: &Arc<ImageService>,
    path: &str,
    out: &mut Outcome,
) -> Result<Result<Original, Response<Body>>, ProxyError> {
    let limit = svc.cfg.source_timeout;
    match tokio::time::timeout(limit, fetch_unbounded(cx, svc, path, out)).await {
        Ok(r) => r,
        Err(_) => {
            refused(cx.shared, "source_timeout");
            tracing::info!(path, after = ?limit, "fetching the original timed out");
            let msg = format!("the original did not arrive within {limit:?}");
            Ok(Err(json_error(StatusCode::GATEWAY_TIMEOUT, "source_timeout", &msg)))
        }
    }
}

async fn fetch_unbounded(
    cx: Call<'_>,
    svc: &Arc<ImageService>,
    path: &str,
    out: &mut Outcome,
) -> Result<Result<Original, Response<Body>>, ProxyError> {
    let limit = svc.cfg.max_source_bytes;
    let too_large = |cx: Call<'_>| {
        refused(cx.shared, "too_large");
        json_error(StatusCode::UNPROCESSABLE_ENTITY, "too_large", &format!("the original is larger than {limit} bytes"))
    };
    match &svc.source {
        Source::Files(dir) => {
            let (dir, path) = (dir.clone(), path.to_string());
            let read = tokio::task::spawn_blocking(move || dir.read(&path, limit)).await;
            match read.unwrap_or(Err(ReadError::NotFound)) {
                Ok(body) => Ok(Ok(Original { body, headers: HeaderMap::new() })),
                Err(ReadError::NotFound) => {
                    Ok(Err(json_error(StatusCode::NOT_FOUND, "source_not_found", "no such original")))
                }
                Err(ReadError::TooLarge) => Ok(Err(too_large(cx))),
            }
        }
        Source::Group(group) => {
            let mut req = Request::new(http_body_util::Empty::<Bytes>::new());
            *req.uri_mut() = path.parse().map_err(|_| ProxyError::BadRequest)?;
            req.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("image/*"));
            let source_cx = Call { host: &svc.source_host, ..cx };
            let resp = Box::pin(crate::upstream::send(source_cx, group, req, out)).await?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
                return Ok(Err(json_error(status, "source_not_found", "the origin has no such original")));
            }
            if !status.is_success() {
                refused(cx.shared, "source_error");
                let msg = format!("the origin answered {} for the original", status.as_u16());
                return Ok(Err(json_error(StatusCode::BAD_GATEWAY, "source_error", &msg)));
            }
            let declared =
                resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Ok(Err(too_large(cx)));
            }
            let (parts, body) = resp.into_parts();
            match collect_bounded(body, limit as usize).await {
                Collected::All(b) => Ok(Ok(Original { body: b, headers: parts.headers })),
                Collected::TooLarge => Ok(Err(too_large(cx))),
                Collected::Failed(e) => {
                    tracing::debug!(path, error = %e, "reading the original failed");
                    Err(ProxyError::TargetReset)
                }
            }
        }
    }
}

fn variant_response(img: flotilla_images::Output, source: &HeaderMap, svc: &ImageService) -> Response<Body> {
    let digest = ring::digest::digest(&ring::digest::SHA256, &img.bytes);
    let etag = format!("\"{}\"", digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut resp = Response::new(crate::body::full(Bytes::from(img.bytes)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(img.format.mime()));
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Freshness and tags follow the original, so invalidating or expiring it covers its variants.
    let carried = [header::CACHE_CONTROL, header::EXPIRES, header::LAST_MODIFIED];
    for name in carried {
        if let Some(v) = source.get(&name) {
            h.insert(name, v.clone());
        }
    }
    for name in ["surrogate-key", "cache-tag", "cdn-cache-control"] {
        if let Some(v) = source.get(name) {
            h.insert(header::HeaderName::from_static(name), v.clone());
        }
    }
    if !h.contains_key(header::CACHE_CONTROL) && !h.contains_key(header::EXPIRES) {
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", svc.cfg.ttl.as_secs())) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{}x{}", img.width, img.height)) {
        h.insert(header::HeaderName::from_static("x-image-size"), v);
    }
    resp
}

/// `{route}/srcset/{path}`, the cache's origin for it: the original's size, read on the image
/// pool (a header probe, but of an arbitrary file) under a worker permit like any transform.
async fn srcset(
    cx: Call<'_>,
    svc: &Arc<ImageService>,
    path: &str,
    html: bool,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let pool = &cx.shared.image_pool;
    let _permit = match admit(&cx, pool).await {
        Ok(p) => p,
        Err(resp) => return Ok(resp),
    };
    let original = match fetch(cx, svc, path, out).await? {
        Ok(o) => o,
        Err(resp) => return Ok(resp),
    };
    let body = original.body.clone();
    let probed = pool
        .run(move || flotilla_images::probe(&body))
        .await
        .unwrap_or_else(|| Err(ImageError::Internal("the image thread stopped".into())));
    let probe = match probed {
        Ok(p) => p,
        Err(e) => {
            refused(cx.shared, e.reason());
            return Ok(json_error(StatusCode::UNPROCESSABLE_ENTITY, e.reason(), &e.to_string()));
        }
    };
    let (w, h) =
        if (5..=8).contains(&probe.orientation) { (probe.height, probe.width) } else { (probe.width, probe.height) };
    let entries = image_url::srcset(&svc.cfg.route, path, w, h, &svc.cfg.presets);
    let (body, ctype) = if html {
        (image_url::srcset_html(&entries) + "\n", "text/html; charset=utf-8")
    } else {
        let variants: Vec<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{{\"preset\":{},\"url\":{},\"width\":{},\"height\":{},\"in_srcset\":{}}}",
                    json_str(&e.preset),
                    json_str(&e.url),
                    e.width,
                    e.height,
                    e.in_srcset
                )
            })
            .collect();
        let html = image_url::srcset_html(&entries);
        (
            format!(
                "{{\"source\":{},\"width\":{w},\"height\":{h},\"variants\":[{}],\"html\":{}}}\n",
                json_str(path),
                variants.join(","),
                json_str(&html)
            ),
            "application/json",
        )
    };
    let mut resp = Response::new(crate::body::full(Bytes::from(body)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    out.source = crate::metrics::Source::Target;
    Ok(resp)
}

pub(crate) fn refused(shared: &Shared, reason: &'static str) {
    shared.metrics.image_refusals.get_or_create(&RefusalLabels { reason }).inc();
}

pub(crate) fn json_error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    crate::body::json_error(status, reason, message, None)
}
