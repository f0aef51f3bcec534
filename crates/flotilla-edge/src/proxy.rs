//! One request through the edge, as named phases, top to bottom: who the client is → check
//! framing → drop what `Connection` nominates → authority and canonical path → (health and
//! ACME answers, redirect to HTTPS) → route, with its rate limit and header policy → then
//! either a WebSocket tunnel (`upgrade`), the image route, the cache layer (`cached`, which
//! asks the backend door on a miss), or straight to the target group (`upstream`) → the edge's
//! own error answers → response headers, metrics and one access-log line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};

use crate::backend::{Backend, Ctx};
use crate::body::Body;
use crate::context::{Call, Conn, Outcome};
use crate::error::ProxyError;
use crate::forwarding::Client;
use crate::group::TargetGroup;
use crate::metrics::Source;
use crate::route::RouteBackend;
use crate::{headers, upgrade, Runtime, Shared};

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    let rid = headers::request_id(req.headers(), &rt.request_id_header);
    let (method, version) = (req.method().clone(), req.version());
    // Only the access log needs the path after the request is consumed.
    let path = if rt.access_log { req.uri().path().to_owned() } else { String::new() };
    let mut out = Outcome::default();
    // Behind a trusted proxy the client is read from each request; otherwise it is the
    // connection's, built once.
    let view;
    let client = if conn.trusted {
        view = Client::behind_proxy(req.headers(), conn.peer.ip(), conn.tls, &rt.trusted_proxies);
        &view
    } else {
        &conn.client
    };
    let result = match forward(&shared, &rt, &conn, client, req, &rid, &mut out).await {
        Ok(Routed::Answered(r)) => Ok(r),
        Ok(Routed::Group { group, host, req }) => {
            // An uncached route with a target group goes straight to it: no cache layer, and
            // the backend door's choice is already made.
            let call = Call { shared: &shared, rt: &rt, conn: &conn, client, host: &host, rid: &rid };
            crate::upstream::send(call, &group, req, &mut out).await
        }
        Err(e) => Err(e),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.error(e.kind());
            error_response(e, &rid)
        }
    };
    // Never indexed by HPACK: each id is unique, so a table entry would only evict useful ones
    // and lengthen the encoder's search for every later id (HTTP/1.1 ignores the flag).
    let mut rid_out = rid.clone();
    rid_out.set_sensitive(true);
    resp.headers_mut().insert(rt.request_id_header.clone(), rid_out);
    if let Some(policy) = &out.headers {
        policy.apply(resp.headers_mut(), client.https);
    }
    let status = resp.status().as_u16();
    let class = crate::metrics::class_index(status);
    // What clients saw, by who answered: targets count their own answers as they finish.
    if out.source != Source::Target {
        if let Some(g) = &out.group {
            g.answered[out.source.index() - 1][class].inc();
        }
    }
    if let Some(route) = out.route.and_then(|i| rt.routes.get(i)) {
        route.counters[out.source.index()][class].inc();
    }
    let elapsed = start.elapsed();
    if let Some(g) = &out.group {
        g.duration.observe(elapsed);
    }
    if rt.access_log {
        tracing::info!(
            target: "flotilla::access",
            client = %client.ip,
            method = %method,
            path = %path,
            version = ?version,
            status,
            target_group = out.group.as_ref().map(|g| g.name.as_str()).unwrap_or("-"),
            target_addr = %out.target.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            attempts = out.attempts,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            request_id = rid.to_str().unwrap_or("-"),
        );
    }
    Ok(resp)
}

/// Where `forward` leaves a request: answered, or bound for a target group's origin phase. The
/// origin phase is awaited by `handle` itself rather than inside `forward`, so the two largest
/// futures of a request share one slot instead of nesting (each nesting level is a multi-KB copy
/// into fresh memory per request).
enum Routed {
    Answered(Response<Body>),
    Group { group: Arc<TargetGroup>, host: String, req: Request<Incoming> },
}

async fn forward(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &Arc<Conn>,
    client: &Client,
    mut req: Request<Incoming>,
    rid: &HeaderValue,
    out: &mut Outcome,
) -> Result<Routed, ProxyError> {
    if req.version() != Version::HTTP_2 {
        match conn.framing.next_request() {
            Some(crate::framing::Verdict::Ambiguous) => return Err(ProxyError::BadRequest),
            Some(crate::framing::Verdict::HeadTooLarge) => return Err(ProxyError::HeadTooLarge),
            None => {}
        }
    }
    if headers::framing_is_ambiguous(req.headers()) {
        return Err(ProxyError::BadRequest);
    }
    // RFC 9112 §3.2: more than one Host is a 400 (which one a cache keys on and which one the
    // target serves could differ: a poisoning vector).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::BadRequest);
    }
    // RFC 9113 §8.3.1: an h2 Host that names another authority than :authority is malformed.
    // Routing and the cache key use :authority while the target would serve Host: refuse it.
    if req.version() == Version::HTTP_2 {
        if let (Some(a), Some(h)) = (req.uri().authority(), req.headers().get(header::HOST)) {
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(ProxyError::BadRequest);
            }
        }
    }
    // Absolute-form (§3.2.2): the URI's authority wins over Host, and the target must see the
    // same host the route and the cache key used.
    if req.version() != Version::HTTP_2 {
        let authority = req.uri().authority().map(|a| match a.port() {
            Some(p) => format!("{}:{p}", a.host()),
            None => a.host().to_string(),
        });
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    // Before anything reads the headers: what `Connection` nominates is gone for the route, the
    // limiter, the cache key and the origin alike.
    let get_or_head = req.method() == Method::GET || req.method() == Method::HEAD;
    headers::sanitize_request(req.headers_mut(), client.via_proxy, get_or_head);
    let host = match headers::authority_of(req.uri(), req.headers(), client.https) {
        Ok(Some(h)) => h,
        Ok(None) if req.version() == Version::HTTP_11 || req.version() == Version::HTTP_2 => {
            // HTTP/1.1 requires Host (RFC 9112 §3.2); 1.0 clients may omit it.
            return Err(ProxyError::BadRequest);
        }
        Ok(None) => headers::Authority::default(),
        Err(()) => return Err(ProxyError::BadRequest),
    };
    match crate::path::canonicalize(req.uri().path(), rt.escaped_slashes) {
        Ok(None) => {}
        Ok(Some(canonical)) => *req.uri_mut() = with_path(req.uri(), &canonical)?,
        Err(_) => return Err(ProxyError::BadPath),
    }
    if req.uri().path() == crate::shield::HEALTH_PATH {
        // A child edge's health check of this node as its cache parent: answered by the edge
        // itself so checks never reach an origin.
        let mut resp = small(StatusCode::OK, "ok\n".into());
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(Routed::Answered(resp));
    }
    if !client.https {
        // ACME HTTP-01 (RFC 8555 §8.3): answered here, before the HTTPS redirect and routing,
        // so neither can send the CA elsewhere.
        if req.uri().path().starts_with(crate::managed::HTTP01_PREFIX) {
            if let Some(key_auth) = shared.managed.http_answer(req.uri().path()) {
                let mut resp = small(StatusCode::OK, key_auth);
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return Ok(Routed::Answered(resp));
            }
        }
        if let Some(port) = rt.https_redirect {
            return Ok(Routed::Answered(redirect_to_https(host.host(), port, req.uri())));
        }
    }
    let call = Call { shared, rt, conn, client, host: host.as_str(), rid };
    let images = rt.images.as_ref().filter(|s| s.rest(req.uri().path()).is_some());
    let route = rt.routes.find(host.host(), req.uri().path());
    out.route = route.map(|r| r.index);
    // Image URLs are answered by the transformer, but a route matching them still brings its
    // rate limit and response headers: `[images]` is no way around a route's policy.
    if let Some(route) = route {
        out.headers = route.headers.clone();
        if let Some(limiter) = &route.limiter {
            let key = limiter.key_of(req.headers(), client.ip);
            let verdict = match shared.shared_limiter.get() {
                Some(store) => limiter.check_shared(&**store, &key).await,
                None => limiter.check(&key),
            };
            if let crate::policy::Verdict::Deny { retry_after } = verdict {
                return Ok(Routed::Answered(too_many_requests(retry_after, rid)));
            }
        }
    }
    if let Some(svc) = images {
        return Box::pin(crate::image_route::serve(call, svc, req, out)).await.map(Routed::Answered);
    }
    let route = route.ok_or(ProxyError::NoRoute)?;
    let group = match &route.backend {
        RouteBackend::Group(g) => g.clone(),
        RouteBackend::Files(files) => {
            let backend = Backend::Files(files);
            if let Some(rule) = route.cache.clone() {
                only_keyed_inputs(&mut req, &rule)?;
                let cx = Ctx { call, backend };
                return Box::pin(crate::cached::serve(cx, &rule, req, out)).await.map(Routed::Answered);
            }
            let cx = Ctx { call, backend };
            return Box::pin(crate::backend::fetch(cx, req, out)).await.map(Routed::Answered);
        }
    };
    out.group = Some(group.clone());
    if req.version() != Version::HTTP_2 && headers::is_upgrade(req.headers()) {
        if !req.body().is_end_stream() {
            // A handshake has no body; one announced here could only be meant for the target's
            // next request on the connection.
            return Err(ProxyError::BadRequest);
        }
        // Boxed: a rare path whose state would otherwise enlarge every request's future (which
        // tokio copies on each HTTP/2 stream spawn).
        return Box::pin(upgrade::forward(call, &group, req, out)).await.map(Routed::Answered);
    }
    if let Some(rule) = route.cache.clone() {
        only_keyed_inputs(&mut req, &rule)?;
        let cx = Ctx { call, backend: Backend::Group(&group) };
        return Box::pin(crate::cached::serve(cx, &rule, req, out)).await.map(Routed::Answered);
    }
    Ok(Routed::Group { group, host: host.into_string(), req })
}

/// A cached route forwards only what its key reads (CloudFront's rule): query parameters the
/// key ignores never reach the origin, so they cannot change an answer stored for everyone.
/// (Method overrides on a GET went in `headers::sanitize_request`.)
fn only_keyed_inputs<B: hyper::body::Body>(
    req: &mut Request<B>,
    rule: &crate::route::CacheRule,
) -> Result<(), ProxyError> {
    // A body on a cached GET is read by some frameworks (Rails merges it into params) but is in
    // no key: refused, as CloudFront does.
    if (req.method() == Method::GET || req.method() == Method::HEAD) && !req.body().is_end_stream() {
        return Err(ProxyError::BadRequest);
    }
    let Some(query) = req.uri().query() else { return Ok(()) };
    let kept = flotilla_cache::key::keyed_query(&rule.key, query);
    if kept.as_deref() == Some(query) {
        return Ok(());
    }
    let pq = match kept {
        Some(q) => format!("{}?{q}", req.uri().path()),
        None => req.uri().path().to_string(),
    };
    *req.uri_mut() = with_path_and_query(req.uri(), &pq)?;
    Ok(())
}

/// `uri` with its path replaced (the query kept).
fn with_path(uri: &Uri, path: &str) -> Result<Uri, ProxyError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    with_path_and_query(uri, &pq)
}

fn with_path_and_query(uri: &Uri, pq: &str) -> Result<Uri, ProxyError> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| ProxyError::BadPath)?);
    Uri::from_parts(parts).map_err(|_| ProxyError::BadPath)
}

fn small(status: StatusCode, body: String) -> Response<Body> {
    crate::body::text(status, body)
}

pub(crate) fn error_response(e: ProxyError, rid: &HeaderValue) -> Response<Body> {
    let mut resp = crate::body::json_error(e.status(), e.kind(), e.message(), Some(rid));
    if matches!(e, ProxyError::BadRequest | ProxyError::HeadTooLarge) {
        // After a framing problem the connection's byte stream cannot be trusted: close it.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 429 with the seconds until the client's bucket has a token again (rounded up).
fn too_many_requests(retry_after: std::time::Duration, rid: &HeaderValue) -> Response<Body> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut resp = crate::body::json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limited", Some(rid));
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

fn redirect_to_https(host: &str, port: u16, uri: &Uri) -> Response<Body> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 { format!("https://{host}{pq}") } else { format!("https://{host}:{port}{pq}") };
    let mut resp = small(StatusCode::MOVED_PERMANENTLY, String::new());
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
