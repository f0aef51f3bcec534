//! The bottom of the request path: the body type on both sides of the proxy, small bodies, a
//! bounded collect, and the one shape of every answer the edge writes itself.
//!
//! Every error the edge makes — a refused request, a missing route, a target that failed, an
//! image it would not transform, a file it does not have — is JSON of one shape, so clients and
//! log pipelines parse one thing:
//! `{"status":404,"error":"no_route","message":"no route for this host and path","request_id":"…"}`
//! (`error` is a stable code, `message` for people), never stored by a cache (`no-store`).

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy: streamed, never buffered whole unless replayable.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// A small answer of the edge's own with `status` and a text body.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// The edge's own error answer (see the module doc). `rid` is the request's id, when the
/// answer is for a request.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str, rid: Option<&HeaderValue>) -> Response<Body> {
    let mut body =
        format!("{{\"status\":{},\"error\":{},\"message\":{}", status.as_u16(), json_str(code), json_str(message));
    if let Some(id) = rid.and_then(|r| r.to_str().ok()) {
        body.push_str(",\"request_id\":");
        body.push_str(&json_str(id));
    }
    body.push_str("}\n");
    let mut resp = text(status, body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) enum Collected {
    All(Bytes),
    /// Over the limit (what was read is dropped).
    TooLarge,
    Failed(BoxError),
}

/// Reads a body up to `limit` bytes (the image route's originals).
pub(crate) async fn collect_bounded(mut body: Body, limit: usize) -> Collected {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Collected::TooLarge;
                    }
                }
            }
            Err(e) => return Collected::Failed(e),
        }
    }
    // Doubling growth can leave up to half the capacity unused, and what is collected here is
    // often kept (cached): give it back rather than pin it.
    if buf.capacity() - buf.len() > buf.len() / 4 {
        return Collected::All(Bytes::copy_from_slice(&buf));
    }
    Collected::All(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_error_shape() {
        let rid = HeaderValue::from_static("abc");
        let resp = json_error(StatusCode::NOT_FOUND, "no_route", "say \"hi\"\n", Some(&rid));
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"{\"status\":404,\"error\":\"no_route\",\"message\":\"say \\\"hi\\\"\\u000a\",\"request_id\":\"abc\"}\n"
        );
    }
}
