//! One request through the edge, as named phases: check framing → route → read body →
//! rewrite headers → pick target → send (retrying where safe) → rewrite response → log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flotilla_config::Algorithm;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};

use crate::error::ProxyError;
use crate::forwarding::{Client, ClientAddr};
use crate::group::{PickRequest, TargetGroup};
use crate::metrics::class_index;
use crate::pool::{Lease, LeasedBody, SendError};
use crate::route::RouteBackend;
use crate::target::Target;
use crate::{headers, upgrade, Runtime, Shared};

pub(crate) use crate::body::{Body, BoxError};

/// Facts about the client connection a request arrived on.
pub(crate) struct Conn {
    /// The client's address: the TCP peer's, or the one its PROXY header named.
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set by the connection's framing tracker (see `framing.rs`).
    pub framing: Arc<crate::framing::FramingFlags>,
    /// Forwarding-header strings for this connection's peer, built once per connection.
    pub client_addr: ClientAddr,
    /// The client as requests on this connection see it, unless the peer is a trusted proxy.
    pub client: Client,
    /// The peer is in `edge.trusted_proxies`: each request's client is read from its
    /// forwarding headers.
    pub trusted: bool,
    /// This worker's connection pool to targets.
    pub pool: Arc<crate::pool::Pool>,
}

/// What the access log records about one exchange.
#[derive(Default)]
pub(crate) struct Outcome {
    pub group: Option<Arc<TargetGroup>>,
    pub target: Option<SocketAddr>,
    pub attempts: u32,
    /// The matched route's response-header policy, applied to whatever answers.
    pub headers: Option<Arc<crate::policy::Headers>>,
}

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
            let cx = Origin {
                shared: &shared,
                rt: &rt,
                conn: &conn,
                client,
                backend: Backend::Group(&group),
                host: &host,
                rid: &rid,
            };
            origin(cx, req, &mut out).await
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
    headers::strip_nominated(req.headers_mut());
    headers::drop_untrusted(req.headers_mut(), client.via_proxy);
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
    let host_str = host.as_str();
    let images = rt.images.as_ref().filter(|s| s.rest(req.uri().path()).is_some());
    let route = rt.routes.find(host.host(), req.uri().path());
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
        let cx = Origin { shared, rt, conn, client, backend: Backend::Images(svc), host: host_str, rid };
        return Box::pin(crate::images::serve(cx, svc, req, out)).await.map(Routed::Answered);
    }
    let route = route.ok_or(ProxyError::NoRoute)?;
    let group = match &route.backend {
        RouteBackend::Group(g) => g.clone(),
        RouteBackend::Files(files) => {
            let backend = Backend::Files(files);
            if let Some(rule) = route.cache.clone() {
                only_keyed_inputs(&mut req, &rule)?;
                let cx = Origin { shared, rt, conn, client, backend, host: host_str, rid };
                return Box::pin(crate::cached::serve(cx, &rule, req, out)).await.map(Routed::Answered);
            }
            let cx = Origin { shared, rt, conn, client, backend, host: host_str, rid };
            return Box::pin(origin(cx, req, out)).await.map(Routed::Answered);
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
        let cx = Origin { shared, rt, conn, client, backend: Backend::Group(&group), host: host_str, rid };
        return Box::pin(upgrade::forward(cx, &group, req, out)).await.map(Routed::Answered);
    }
    if let Some(rule) = route.cache.clone() {
        only_keyed_inputs(&mut req, &rule)?;
        let cx = Origin { shared, rt, conn, client, backend: Backend::Group(&group), host: host_str, rid };
        return Box::pin(crate::cached::serve(cx, &rule, req, out)).await.map(Routed::Answered);
    }
    Ok(Routed::Group { group, host: host.into_string(), req })
}

/// What answers a request that reaches the origin phase.
#[derive(Clone, Copy)]
pub(crate) enum Backend<'a> {
    Group(&'a Arc<TargetGroup>),
    /// `origin = "files:DIR"`.
    Files(&'a Arc<crate::files::FilesOrigin>),
    /// Image URLs: the transformer, which fetches originals from its own source.
    Images(&'a Arc<crate::images::ImageService>),
}

/// [`Backend`] held beyond the request (a background refresh).
pub(crate) enum OwnedBackend {
    Group(Arc<TargetGroup>),
    Files(Arc<crate::files::FilesOrigin>),
    Images(Arc<crate::images::ImageService>),
}

impl Backend<'_> {
    pub(crate) fn to_owned(self) -> OwnedBackend {
        match self {
            Backend::Group(g) => OwnedBackend::Group(g.clone()),
            Backend::Files(f) => OwnedBackend::Files(f.clone()),
            Backend::Images(i) => OwnedBackend::Images(i.clone()),
        }
    }
}

impl OwnedBackend {
    pub(crate) fn borrow(&self) -> Backend<'_> {
        match self {
            OwnedBackend::Group(g) => Backend::Group(g),
            OwnedBackend::Files(f) => Backend::Files(f),
            OwnedBackend::Images(i) => Backend::Images(i),
        }
    }
}

/// Everything the origin phase needs besides the request itself.
#[derive(Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub shared: &'a Arc<Shared>,
    pub rt: &'a Arc<Runtime>,
    pub conn: &'a Arc<Conn>,
    /// Who the client is and which scheme it used (see `forwarding.rs`).
    pub client: &'a Client,
    pub backend: Backend<'a>,
    /// The authority the route matched and the key uses, and the origin gets as `Host`:
    /// lower-case host, plus the port when it is not the scheme's default.
    pub host: &'a str,
    pub rid: &'a HeaderValue,
}

impl Origin<'_> {
    /// The host part of cache keys: the authority, prefixed by the scheme when it is https, so
    /// an origin's different answers to http and https (a redirect, absolute links) never meet.
    pub(crate) fn key_host(&self) -> std::borrow::Cow<'_, str> {
        if self.client.https {
            std::borrow::Cow::Owned(format!("https://{}", self.host))
        } else {
            std::borrow::Cow::Borrowed(self.host)
        }
    }
}

/// The origin phase: read the body, rewrite headers, pick a target, send (retrying where safe),
/// rewrite the response.
pub(crate) async fn origin<B>(cx: Origin<'_>, req: Request<B>, out: &mut Outcome) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let group = match cx.backend {
        Backend::Group(g) => g,
        Backend::Images(svc) => return Box::pin(crate::images::render(cx, svc, req, out)).await,
        Backend::Files(files) => {
            let (parts, _) = req.into_parts();
            return Ok(
                crate::files::serve(files, &parts.method, parts.uri.path(), parts.uri.query(), &parts.headers).await
            );
        }
    };
    let Origin { rt, conn, client, host, rid, .. } = cx;
    let cfg = group.config();
    let (mut parts, body) = req.into_parts();
    let fault = BodyFault::default();
    let mut body = read_body(body, rt, &fault).await?;
    prepare_headers(&mut parts, conn, client, host, rid, &rt.request_id_header, false);

    let sticky_in = cfg.stickiness.enabled.then(|| headers::cookie(&parts.headers, &cfg.stickiness.cookie)).flatten();
    let ip_bytes;
    let hash_key: Option<&[u8]> = match cfg.algorithm {
        Algorithm::HashIp => {
            ip_bytes = client.ip_text.clone();
            Some(ip_bytes.as_bytes())
        }
        Algorithm::HashHeader => {
            cfg.hash_header.as_ref().and_then(|h| parts.headers.get(h.as_str())).map(|v| v.as_bytes())
        }
        _ => None,
    };
    let idempotent = is_idempotent(&parts.method);
    let attempts = 1 + cfg.retries;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_err = ProxyError::NoTarget;
    let mut last_resp: Option<(Response<Incoming>, Lease, Arc<Target>)> = None;
    loop {
        let pick = PickRequest { sticky: sticky_in, hash_key, exclude: &tried };
        let Some(target) = group.pick(&pick) else { break };
        let Some(attempt_body) = body.next() else { break };
        if !tried.is_empty() {
            group.retries.inc();
        }
        out.attempts += 1;
        out.target = Some(target.addr);
        let guard = target.begin();
        let request = outgoing(&parts, attempt_body);
        let retryable =
            match tokio::time::timeout(rt.timeouts.target_response, conn.pool.send(target.addr, request)).await {
                Err(_) => return Err(ProxyError::TargetTimeout),
                Ok(Err(SendError::Connect(e))) => {
                    tracing::debug!(target = %target.addr, error = %e, "connect to target failed");
                    group.report_connect_failure(&target);
                    last_err = ProxyError::TargetConnect;
                    body.replayable()
                }
                Ok(Err(SendError::Failed(e))) => {
                    if let Some(client_fault) = fault.get() {
                        // The client's body broke mid-stream: not the target's fault.
                        return Err(client_fault);
                    }
                    tracing::debug!(target = %target.addr, error = %e, "target connection failed");
                    group.report_connect_failure(&target);
                    last_err = ProxyError::TargetReset;
                    idempotent && body.replayable()
                }
                Ok(Ok((resp, lease))) => {
                    let status = resp.status();
                    group.report_response(&target, status.as_u16());
                    let retry = idempotent
                        && body.replayable()
                        && matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE)
                        && tried.len() + 1 < attempts as usize;
                    if !retry {
                        return Ok(finish(resp, &target, guard, Some(lease), &cfg.stickiness, sticky_in, client.https));
                    }
                    last_resp = Some((resp, lease, target.clone()));
                    true
                }
            };
        drop(guard);
        tried.push(target.addr);
        if !retryable || tried.len() >= attempts as usize {
            break;
        }
    }
    match last_resp {
        // Every retry failed too: the target's own 502/503 says more than ours would.
        Some((resp, lease, target)) => {
            let guard = target.begin();
            Ok(finish(resp, &target, guard, Some(lease), &cfg.stickiness, sticky_in, client.https))
        }
        None => Err(last_err),
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Removes hop-by-hop headers and adds forwarding and request-id headers, once per request.
/// The origin always gets `Host` as the route and the cache key read it (`host`), whatever
/// the client sent (HTTP/2 carries it in `:authority`; a `Connection: host` cannot remove it).
pub(crate) fn prepare_headers(
    parts: &mut Parts,
    conn: &Conn,
    client: &Client,
    host: &str,
    rid: &HeaderValue,
    rid_name: &header::HeaderName,
    upgrade: bool,
) {
    // Room for the headers added below in one step (hyper sizes the map to what it parsed, so
    // each insert could otherwise grow and rehash it).
    parts.headers.reserve(8);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // HTTP/2 may split `Cookie` into several fields; an HTTP/1.1 origin expects one (RFC 9113
    // §8.2.3), and some read only the first.
    if parts.headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        headers::join_cookies(&mut parts.headers);
    }
    if !host.is_empty() {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    crate::forwarding::add_forwarded(&mut parts.headers, &conn.client_addr, client, host);
    parts.headers.insert(rid_name.clone(), rid.clone());
}

/// A cached route forwards only what its key reads (CloudFront's rule): query parameters the
/// key ignores never reach the origin, so they cannot change an answer stored for everyone;
/// and method-override headers (`X-HTTP-Method-Override: DELETE` on a GET) are dropped, since a
/// GET is keyed and stored as a GET.
fn only_keyed_inputs<B: hyper::body::Body>(
    req: &mut Request<B>,
    rule: &crate::route::CacheRule,
) -> Result<(), ProxyError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        // A body on a cached GET is read by some frameworks (Rails merges it into params) but
        // is in no key: refused, as CloudFront does.
        if !req.body().is_end_stream() {
            return Err(ProxyError::BadRequest);
        }
        for h in ["x-http-method-override", "x-http-method", "x-method-override"] {
            req.headers_mut().remove(h);
        }
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

/// The request as sent to a target: origin-form path, HTTP/1.1, the prepared headers.
pub(crate) fn outgoing(parts: &Parts, body: Body) -> Request<Body> {
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = Uri::from(path);
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    // Framing is the body's, never the copied head's: hyper frames from what is actually sent.
    // A client's `Content-Length` on a request forwarded with another body (an upgrade, a
    // background refresh, a shield ask — all sent empty) would make the target read the next
    // request on the pooled connection as this one's body: smuggling.
    req.headers_mut().remove(header::CONTENT_LENGTH);
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    req
}

/// Turns a target's response into the client's: strip hop-by-hop, set the sticky cookie, and
/// tie the in-flight guard to the body so draining waits for the last byte.
pub(crate) fn finish(
    resp: Response<Incoming>,
    target: &Target,
    guard: crate::target::InFlight,
    lease: Option<Lease>,
    sticky: &flotilla_config::Stickiness,
    sticky_in: Option<&str>,
    tls: bool,
) -> Response<Body> {
    target.by_class[class_index(resp.status().as_u16())].inc();
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if sticky.enabled && sticky_in != Some(target.id.as_str()) {
        let cookie = format!(
            "{}={}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
            sticky.cookie,
            target.id,
            sticky.duration.as_secs(),
            if tls { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            parts.headers.append(header::SET_COOKIE, v);
        }
    }
    let body = LeasedBody::new(body, lease, guard).map_err(BoxError::from).boxed_unsync();
    Response::from_parts(parts, body)
}

/// A request body that can be sent more than once when it is empty or small enough to buffer.
enum ReplayBody {
    Empty,
    Buffered(Bytes),
    Stream(Option<Body>),
}

impl ReplayBody {
    fn replayable(&self) -> bool {
        !matches!(self, ReplayBody::Stream(_))
    }

    /// The body for the next attempt, or `None` if a streamed body was already sent.
    fn next(&mut self) -> Option<Body> {
        match self {
            ReplayBody::Empty => Some(empty()),
            ReplayBody::Buffered(b) => Some(crate::body::full(b.clone())),
            ReplayBody::Stream(s) => s.take(),
        }
    }
}

/// Records why a streamed client body failed, so the failure is blamed on the client (400/413)
/// rather than on the target that saw the body break off.
#[derive(Clone, Default)]
struct BodyFault(Arc<std::sync::atomic::AtomicU8>);

impl BodyFault {
    fn set(&self, e: &BoxError) {
        let code = if e.is::<http_body_util::LengthLimitError>() { 2 } else { 1 };
        self.0.store(code, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> Option<ProxyError> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(ProxyError::ClientBody),
            2 => Some(ProxyError::BodyTooLarge),
            _ => None,
        }
    }
}

async fn read_body<B>(body: B, rt: &Runtime, fault: &BodyFault) -> Result<ReplayBody, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(ReplayBody::Empty);
    }
    let limits = &rt.limits;
    let len = body.size_hint().exact();
    if len.is_some_and(|n| n > limits.max_request_body) {
        return Err(ProxyError::BodyTooLarge);
    }
    if len.is_some_and(|n| n <= limits.max_retry_body as u64) {
        let collect = Limited::new(body, limits.max_retry_body).collect();
        return match tokio::time::timeout(rt.timeouts.header_read, collect).await {
            Ok(Ok(c)) => Ok(ReplayBody::Buffered(c.to_bytes())),
            _ => Err(ProxyError::ClientBody),
        };
    }
    let limited = Limited::new(body, limits.max_request_body.min(usize::MAX as u64) as usize);
    let fault = fault.clone();
    let body = limited.map_err(move |e| {
        fault.set(&e);
        e
    });
    Ok(ReplayBody::Stream(Some(body.boxed_unsync())))
}

pub(crate) use crate::body::empty;

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
