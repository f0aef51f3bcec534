//! Bodies streamed both ways without buffering (`POST /sink`, `GET /bytes`), so a test of the
//! edge's memory under large or slow bodies measures the edge, not the app.

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `POST /sink`: reads the body as it streams in, keeping none of it, and answers how many bytes
/// arrived — an upload target that costs the app no memory, so a test measures the edge's.
pub(crate) async fn sink(body: axum::body::Body) -> Response {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("body failed after {n} bytes: {e}\n")).into_response(),
        }
    }
    format!("{n}\n").into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct Size {
    n: Option<u64>,
}

/// `GET /bytes?n=N`: N bytes (default 1 MiB, capped at 4 GiB) generated as the client reads
/// them, so a slow reader holds the response back instead of the app buffering it.
pub(crate) async fn bytes_response(Query(q): Query<Size>) -> Response {
    let n = q.n.unwrap_or(1 << 20).min(4 << 30);
    let mut resp =
        axum::body::Body::new(Repeat { left: n, chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]) }).into_response();
    resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

struct Repeat {
    left: u64,
    chunk: bytes::Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= take as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}
