//! The shield tier (CloudFront's Origin Shield): with `cache.parent`, a cached route's misses ask
//! another Flotilla node first. The parent coalesces the misses of every child into one origin
//! request per object, so N edges cost the origin one request per object instead of N.
//!
//! The parent is an ordinary target group (`flotilla-shield`, listed with the others) with fast
//! active checks against a path the parent's edge answers itself, and ejection on the first
//! failed connect. A parent that is down, unhealthy or failing to answer is skipped — the
//! request goes straight to the origin and `flotilla_cache_shield_fallbacks_total` counts it —
//! so the shield never fails a request that the origin could serve.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_config::{Algorithm, HealthCheck, Passive, Stickiness, TargetConfig, TargetGroupConfig, SHIELD_GROUP};
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;

use crate::body::Body;
use crate::context::{Call, Outcome};
use crate::target::TargetState;

/// Answered `200` by every edge, for its children's health checks.
pub(crate) const HEALTH_PATH: &str = "/.well-known/flotilla/shield";
/// Marks a request a child sent to its parent: the parent serves it from its cache or the
/// origin, never from its own parent (no loops, one shield hop).
pub(crate) const HEADER: &str = "x-flotilla-shield";

/// The target group the edge builds for `cache.parent`.
pub(crate) fn group_config(parent: SocketAddr) -> TargetGroupConfig {
    TargetGroupConfig {
        name: SHIELD_GROUP.into(),
        targets: vec![TargetConfig { addr: parent, zone: None, weight: 1 }],
        algorithm: Algorithm::RoundRobin,
        hash_header: None,
        deregistration_delay: Duration::ZERO,
        slow_start: Duration::ZERO,
        stickiness: Stickiness {
            enabled: false,
            cookie: "flotilla_sticky".into(),
            duration: Duration::from_secs(1),
            secret: None,
        },
        retries: 0,
        health_check: HealthCheck {
            enabled: true,
            path: HEALTH_PATH.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            matcher: vec![(200, 299)],
        },
        // A parent answering 5xx is relaying its origin's trouble, not down itself.
        passive: Passive { consecutive_5xx: 0, consecutive_connect_failures: 1 },
    }
}

/// Asks the parent for a cached route's miss. `None`: no parent, this request came from a
/// child, or the parent is down — the caller goes to the origin.
pub(crate) async fn via_parent<B>(cx: Call<'_>, req: &Request<B>, out: &mut Outcome) -> Option<Response<Body>> {
    let shield = cx.rt.shield.as_ref()?;
    if req.headers().contains_key(HEADER) {
        return None;
    }
    let metrics = &cx.shared.metrics;
    if !shield.targets().iter().any(|t| t.state() == TargetState::Healthy) {
        metrics.shield_fallbacks.inc();
        return None;
    }
    let mut ask = Request::new(Empty::<Bytes>::new());
    *ask.method_mut() = req.method().clone();
    *ask.uri_mut() = req.uri().clone();
    *ask.headers_mut() = req.headers().clone();
    ask.headers_mut().insert(HEADER, HeaderValue::from_static("1"));
    // The parent gets the request as this node keyed it: the same Host (`prepare_headers`
    // sets it from `cx.host`) and, in X-Forwarded-Proto, the client's scheme — which the parent
    // believes because it lists its children in `edge.trusted_proxies`. Without that a child
    // behind TLS asked an `redirect_http` parent over plain HTTP and cached its 301.
    let limit = cx.rt.cache_parent_timeout;
    let failed = match tokio::time::timeout(limit, crate::upstream::send(cx, shield, ask, out)).await {
        Ok(Ok(resp)) => {
            metrics.shield_parent.inc();
            return Some(resp);
        }
        Ok(Err(e)) => format!("{e:?}"),
        Err(_) => {
            // Accepting connections but not answering (paused, overloaded): eject it now, as a
            // failed connect would; its health checks bring it back once it answers again.
            for t in shield.targets().iter() {
                shield.report_connect_failure(t);
            }
            format!("no response head within {limit:?}")
        }
    };
    tracing::debug!(error = %failed, "cache parent failed; asking the origin");
    metrics.shield_fallbacks.inc();
    *out = Outcome { headers: out.headers.take(), ..Outcome::default() };
    None
}
