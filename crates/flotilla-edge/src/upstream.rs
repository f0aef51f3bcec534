//! A target group as a backend: read (and, when small, buffer) the body, rewrite the headers,
//! pick a target, send with a response deadline, retry where that is safe, and turn the
//! target's response into the client's. Every request that reaches a target goes through
//! [`send`] (or, for a WebSocket handshake, through the same header rules in `upgrade.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_config::Algorithm;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{empty, Body, BoxError};
use crate::context::{Call, Conn, Outcome};
use crate::error::ProxyError;
use crate::forwarding::Client;
use crate::group::{PickRequest, TargetGroup};
use crate::metrics::{class_index, Source};
use crate::pool::{Lease, LeasedBody, SendError};
use crate::target::Target;
use crate::{headers, Runtime};

/// Sends a request to `group`: read the body, rewrite headers, pick a target, send (retrying
/// where safe), rewrite the response.
pub(crate) async fn send<B>(
    call: Call<'_>,
    group: &Arc<TargetGroup>,
    req: Request<B>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Call { rt, conn, client, host, rid, .. } = call;
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
                        out.source = Source::Target;
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
            out.source = Source::Target;
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
