//! Responses for the cache and image tests: caching headers chosen by the query (with a count
//! that tells an origin fetch from a hit), static assets with validators, and photos from
//! `--photos DIR` as originals for `[images]`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// A response whose caching headers come from the query (`cc`, `vary`, `tag`, `etag`, `ms` to
/// delay, `pad` bytes of compressible filler), and whose body counts the requests this endpoint has served, so a test can tell an
/// origin fetch from a cache hit.
pub(crate) async fn cached(
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

const STATIC: [(&str, &str, &str); 3] = [
    ("app.css", "text/css; charset=utf-8", "body{font-family:system-ui,sans-serif;margin:3rem;color:#123}\nh1{color:#0a5}\n"),
    ("app.js", "text/javascript; charset=utf-8", "document.documentElement.dataset.flotilla = 'demo';\n"),
    (
        "logo.svg",
        "image/svg+xml",
        "<svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'><circle cx='32' cy='32' r='28' fill='#0a5'/></svg>\n",
    ),
];

pub(crate) async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
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
pub(crate) async fn photo(State(app): State<Shared>, Path(file): Path<String>) -> Response {
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

pub(crate) async fn photos_served(State(app): State<Shared>) -> String {
    format!("{}\n", app.photo_requests.load(Ordering::Relaxed))
}
