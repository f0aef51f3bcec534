//! Errors: `EdgeError` for control calls (start, reload, register), `ProxyError` for one request,
//! which records who failed and whether a retry is safe, and maps to a status in one place.

use std::net::SocketAddr;

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start an edge worker: {0}")]
    Worker(String),
    #[error("the edge has been shut down")]
    Stopped,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("target group {0:?} does not exist")]
    UnknownTargetGroup(String),
    #[error("target {addr} is not registered in target group {group:?}")]
    UnknownTarget { group: String, addr: SocketAddr },
}

/// Why one proxied request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The client sent something we refuse to forward (smuggling risk, bad framing).
    BadRequest,
    HeadTooLarge,
    /// A request path with a malformed escape, an encoded slash (by default) or a `..;`
    /// segment (see `path.rs`).
    BadPath,
    BodyTooLarge,
    /// The client was too slow or went away while sending its body.
    ClientBody,
    NoRoute,
    /// The route's group has no target that can take a request.
    NoTarget,
    /// Could not connect: the target never saw the request, so any method may be retried.
    TargetConnect,
    /// The connection broke after the request was (maybe) sent.
    TargetReset,
    TargetTimeout,
}

impl ProxyError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ProxyError::BadRequest | ProxyError::BadPath | ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoTarget => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TargetConnect | ProxyError::TargetReset => StatusCode::BAD_GATEWAY,
            ProxyError::TargetTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Metric label: who failed and how.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            ProxyError::BadRequest => "client_bad_request",
            ProxyError::HeadTooLarge => "client_head_too_large",
            ProxyError::BadPath => "client_bad_path",
            ProxyError::BodyTooLarge => "client_body_too_large",
            ProxyError::ClientBody => "client_body",
            ProxyError::NoRoute => "no_route",
            ProxyError::NoTarget => "no_target",
            ProxyError::TargetConnect => "target_connect",
            ProxyError::TargetReset => "target_reset",
            ProxyError::TargetTimeout => "target_timeout",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            ProxyError::BadRequest => "bad request",
            ProxyError::HeadTooLarge => "request head too large",
            ProxyError::BadPath => "request path refused: malformed escape, encoded slash or dot segment",
            ProxyError::BodyTooLarge => "request body too large",
            ProxyError::ClientBody => "could not read request body",
            ProxyError::NoRoute => "no route for this host and path",
            ProxyError::NoTarget => "no target available",
            ProxyError::TargetConnect => "could not connect to a target",
            ProxyError::TargetReset => "target closed the connection",
            ProxyError::TargetTimeout => "target did not answer in time",
        }
    }
}
