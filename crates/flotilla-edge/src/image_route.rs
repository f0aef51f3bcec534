//! The image route's front: `{route}/{preset}/{path}`, `{route}/srcset/{path}` and signed
//! ad-hoc sizes. It parses the URL, keeps only what the grammar reads (the query's signature),
//! normalises `Accept` to the one format it negotiated (so the cache holds at most one variant
//! per format under `Vary: Accept`), and hands the request to the cache layer — whose misses
//! reach the transformer (`images.rs`) through the backend door.

use std::sync::Arc;

use flotilla_config::ImageFormat;
use flotilla_images::url::{self as image_url, ImageUrl, Variant};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::backend::{Backend, Ctx};
use crate::body::Body;
use crate::context::{Call, Outcome};
use crate::error::ProxyError;
use crate::images::ImageService;

/// Entry point for `{route}/…` requests.
pub(crate) async fn serve(
    call: Call<'_>,
    svc: &Arc<ImageService>,
    mut req: Request<Incoming>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = crate::images::json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "images are read with GET or HEAD",
        );
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(resp);
    }
    out.group = svc.source_group().cloned();
    // Keyed, fetched and stored under the fixed source authority, not the client's `Host`; on
    // a miss the cache asks the backend door, whose image arm is the transformer.
    let cx = Ctx { call: Call { host: &svc.source_host, ..call }, backend: Backend::Images(svc) };
    let parsed = svc.parse(req.uri().path(), req.uri().query());
    match parsed {
        Err(e) => {
            crate::images::refused(cx.shared, e.reason());
            Ok(crate::images::json_error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                e.reason(),
                &e.to_string(),
            ))
        }
        Ok(ImageUrl::Srcset { path, html }) => {
            // Cached like a variant (one entry per path and form), so a flood of srcset requests
            // costs the origin one fetch and the pool one probe.
            let pq = format!("{}/srcset{path}{}", svc.cfg.route, if html { "?html" } else { "" });
            *req.uri_mut() = pq.parse().map_err(|_| ProxyError::BadPath)?;
            Box::pin(crate::cached::serve(cx, &svc.rule, req, out)).await
        }
        Ok(ImageUrl::Variant { variant, path }) => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = match &variant {
                Variant::Adhoc(a) if a.format.is_some() => a.format.unwrap_or(ImageFormat::Jpeg),
                _ => image_url::negotiate(accept, &svc.cfg.formats),
            };
            // One Accept value per format: the cache's Vary: Accept then keys on the format.
            req.headers_mut().insert(header::ACCEPT, HeaderValue::from_static(format.mime()));
            // Only what the URL grammar reads stays in the query — for an ad-hoc size its
            // signature, re-encoded canonically; anything else a client appends (`?x=1`) would
            // otherwise be a fresh cache key per request (a transform each) and reach the origin.
            let query = match (&variant, svc.signing_key.as_deref()) {
                (Variant::Adhoc(a), Some(key)) => Some(image_url::sign(key, &a.canonical, &path)),
                _ => None,
            };
            let pq = match query {
                Some(sig) => format!("{}?s={sig}", req.uri().path()),
                None => req.uri().path().to_string(),
            };
            *req.uri_mut() = pq.parse().map_err(|_| ProxyError::BadPath)?;
            Box::pin(crate::cached::serve(cx, &svc.rule, req, out)).await
        }
    }
}
