//! The `files:DIR` origin: a static file server for routes (and image originals), with what a
//! CDN origin needs — content types, `ETag`/`Last-Modified` and 304s, single byte ranges and
//! `If-Range` — and nothing that can leave the directory: `..`, NUL and backslashes are refused,
//! and the resolved path (after symlinks) must stay under the canonical root.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use flotilla_cache::conditional::{self, Validators};
use flotilla_cache::range::Ranges;

use crate::body::{empty, Body, BoxError};

const CHUNK: usize = 64 * 1024;

pub(crate) struct FilesOrigin {
    /// Canonical when the directory existed at load; requests fail with 404 otherwise.
    root: PathBuf,
    /// Small files served in the last second, by URL path: answered with no syscall and no
    /// trip to the blocking pool, whose thread hand-offs were most of a small file's cost
    /// (nginx's `open_file_cache`, holding the bytes too). A change on disk shows within
    /// [`RECENT_FOR`].
    recent: moka::sync::Cache<String, std::sync::Arc<Recent>>,
}

struct Recent {
    bytes: Bytes,
    modified: Option<SystemTime>,
    path: PathBuf,
}

const RECENT_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes of small files kept in `recent` at most.
const RECENT_BYTES: u64 = 32 << 20;

/// A file found under the root.
pub(crate) struct Found {
    /// None when the file came from `recent` (then `small` holds it).
    file: Option<std::fs::File>,
    len: u64,
    modified: Option<SystemTime>,
    path: PathBuf,
    /// The whole file, when it is small enough to read in the lookup's blocking call.
    small: Option<Bytes>,
}

/// Files up to this size are read in the same blocking call that finds them and sent from
/// memory: one trip to the blocking pool per request instead of one per read (a small static
/// file cost ~110 µs of CPU per request, most of it in those trips).
const SMALL_FILE: u64 = 64 * 1024;

pub(crate) enum Lookup {
    Found(Found),
    /// A directory asked for without its trailing slash.
    Directory,
    NotFound,
    /// `..`, NUL, backslash or bad percent-encoding.
    BadPath,
}

impl FilesOrigin {
    pub(crate) fn new(dir: &Path) -> Self {
        FilesOrigin {
            root: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_BYTES)
                .weigher(|k: &String, v: &std::sync::Arc<Recent>| {
                    (k.len() + v.bytes.len() + 256).min(u32::MAX as usize) as u32
                })
                .time_to_live(RECENT_FOR)
                .build(),
        }
    }

    /// Resolves a URL path (still percent-encoded) to a file. Blocking.
    pub(crate) fn lookup(&self, url_path: &str) -> Lookup {
        let Some(decoded) = flotilla_images::url::percent_decode(url_path) else { return Lookup::BadPath };
        if decoded.contains(['\0', '\\']) || decoded.split('/').any(|seg| seg == "..") {
            return Lookup::BadPath;
        }
        // Dotfiles (`.env`, `.git/`) are not published, as in most static servers; RFC 8615's
        // `.well-known` is.
        if decoded.split('/').any(|seg| seg.starts_with('.') && seg != ".well-known") {
            return Lookup::NotFound;
        }
        let mut rel = decoded.trim_start_matches('/').to_string();
        if rel.is_empty() || rel.ends_with('/') {
            rel.push_str("index.html");
        }
        let Ok(real) = std::fs::canonicalize(self.root.join(&rel)) else { return Lookup::NotFound };
        if !real.starts_with(&self.root) {
            return Lookup::NotFound;
        }
        let Ok(meta) = std::fs::metadata(&real) else { return Lookup::NotFound };
        if meta.is_dir() {
            return Lookup::Directory;
        }
        match std::fs::File::open(&real) {
            Ok(file) if meta.is_file() => Lookup::Found(Found {
                file: Some(file),
                len: meta.len(),
                modified: meta.modified().ok(),
                path: real,
                small: None,
            }),
            _ => Lookup::NotFound,
        }
    }

    /// Reads a whole file of at most `limit` bytes (image originals). Blocking.
    pub(crate) fn read(&self, url_path: &str, limit: u64) -> Result<Bytes, ReadError> {
        match self.lookup(url_path) {
            Lookup::Found(f) if f.len > limit => Err(ReadError::TooLarge),
            Lookup::Found(f) => {
                use std::io::Read;
                let Some(mut file) = f.file else { return Err(ReadError::NotFound) };
                let mut buf = Vec::with_capacity(f.len as usize);
                file.by_ref().take(limit + 1).read_to_end(&mut buf).map_err(|_| ReadError::NotFound)?;
                if buf.len() as u64 > limit {
                    return Err(ReadError::TooLarge);
                }
                Ok(Bytes::from(buf))
            }
            _ => Err(ReadError::NotFound),
        }
    }
}

pub(crate) enum ReadError {
    NotFound,
    TooLarge,
}

/// Answers one request from the directory.
pub(crate) async fn serve(
    origin: &std::sync::Arc<FilesOrigin>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are allowed here\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let recent = origin.recent.get(path);
    let lookup = match recent {
        Some(r) => Lookup::Found(Found {
            file: None,
            len: r.bytes.len() as u64,
            modified: r.modified,
            path: r.path.clone(),
            small: Some(r.bytes.clone()),
        }),
        None => {
            let (o, p) = (origin.clone(), path.to_string());
            let head = method == Method::HEAD;
            let found = tokio::task::spawn_blocking(move || match o.lookup(&p) {
                Lookup::Found(mut f) if !head && f.len <= SMALL_FILE => {
                    read_small(&mut f);
                    Lookup::Found(f)
                }
                other => other,
            })
            .await
            .unwrap_or(Lookup::NotFound);
            if let Lookup::Found(Found { small: Some(bytes), modified, path: real, .. }) = &found {
                let r = Recent { bytes: bytes.clone(), modified: *modified, path: real.clone() };
                origin.recent.insert(path.to_string(), std::sync::Arc::new(r));
            }
            found
        }
    };
    let found = match lookup {
        Lookup::Found(f) => f,
        Lookup::NotFound => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Lookup::BadPath => return plain(StatusCode::BAD_REQUEST, "bad path\n"),
        Lookup::Directory => {
            let location = match query {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            let mut r = plain(StatusCode::MOVED_PERMANENTLY, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
    };
    let etag = format!(
        "\"{:x}-{:x}\"",
        found.modified.and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs()),
        found.len
    );
    let last_modified = found.modified.map(httpdate::fmt_http_date);
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&found.path)));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    if let Some(v) = last_modified.as_deref().and_then(|lm| HeaderValue::from_str(lm).ok()) {
        out.insert(header::LAST_MODIFIED, v);
    }
    let validators = Validators { etag: Some(&etag), last_modified: last_modified.as_deref() };
    if conditional::not_modified(headers, &validators) {
        return with_headers(StatusCode::NOT_MODIFIED, out, empty());
    }
    let (status, start, len) = match range(headers, &validators, found.len) {
        Ranges::Full => (StatusCode::OK, 0, found.len),
        Ranges::Satisfiable(r) => {
            let (start, end) = r[0];
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", found.len)) {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Ranges::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", found.len)) {
                out.insert(header::CONTENT_RANGE, v);
            }
            return with_headers(StatusCode::RANGE_NOT_SATISFIABLE, out, empty());
        }
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD || len == 0 {
        return with_headers(status, out, empty());
    }
    if let Some(bytes) = &found.small {
        let (from, to) = (start as usize, (start + len) as usize);
        return with_headers(status, out, crate::body::full(bytes.slice(from..to)));
    }
    let Some(file) = found.file else { return plain(StatusCode::INTERNAL_SERVER_ERROR, "read failed\n") };
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "read failed\n");
    }
    let body = FileBody { file, remaining: len, buf: BytesMut::new() };
    with_headers(status, out, body.boxed_unsync())
}

/// Reads a small file whole; on any surprise (an error, a length other than its metadata said)
/// leaves it to be streamed from the start instead.
fn read_small(f: &mut Found) {
    use std::io::{Read, Seek};
    let mut buf = Vec::with_capacity(f.len as usize);
    let Some(file) = f.file.as_mut() else { return };
    let ok = file.by_ref().take(f.len + 1).read_to_end(&mut buf).is_ok() && buf.len() as u64 == f.len;
    if ok {
        f.small = Some(Bytes::from(buf));
    } else {
        let _ = file.seek(std::io::SeekFrom::Start(0));
    }
}

/// One range is served; several get the whole file (RFC 9110 §14.2 allows it), which keeps
/// the streamed body simple.
fn range(h: &HeaderMap, v: &Validators<'_>, len: u64) -> Ranges {
    match conditional::requested_ranges(h, v, len) {
        Ranges::Satisfiable(r) if r.len() > 1 => Ranges::Full,
        other => other,
    }
}

/// Content types by extension: the common web ones; the rest are octet-stream.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// A file region streamed in 64 KiB chunks (never the whole file in memory).
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (self.remaining.min(CHUNK as u64)) as usize;
        let this = &mut *self;
        if this.buf.capacity() < want {
            this.buf.reserve(want);
        }
        this.buf.resize(want, 0);
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    // The file shrank under us: end early rather than hang.
                    return Poll::Ready(Some(Err("file ended before its length".into())));
                }
                this.remaining -= n as u64;
                let chunk = this.buf.split_to(n).freeze();
                this.buf.clear();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    with_headers(status, h, crate::body::full(Bytes::from_static(text.as_bytes())))
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn ranges() {
        let v = Validators { etag: Some("\"1-64\""), last_modified: None };
        let e = &v;
        let part = |r: Ranges| match r {
            Ranges::Satisfiable(v) => Some(v),
            _ => None,
        };
        assert_eq!(part(range(&h(&[("range", "bytes=-10")]), e, 100)), Some(vec![(90, 99)]));
        assert_eq!(range(&h(&[("range", "bytes=0-1,5-6")]), e, 100), Ranges::Full);
        assert_eq!(range(&h(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]), e, 100), Ranges::Full);
        assert_eq!(part(range(&h(&[("range", "bytes=0-9"), ("if-range", "\"1-64\"")]), e, 100)), Some(vec![(0, 9)]));
    }

    #[test]
    fn lookup_stays_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("flotilla-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/index.html"), "hi").unwrap();
        std::fs::write(dir.join("a b.txt"), "x").unwrap();
        std::fs::write(dir.join(".env"), "SECRET=1").unwrap();
        std::fs::create_dir_all(dir.join(".well-known")).unwrap();
        std::fs::write(dir.join(".well-known/security.txt"), "Contact: x").unwrap();
        let _ = std::os::unix::fs::symlink("/etc", dir.join("etc"));
        let o = FilesOrigin::new(&dir);
        assert!(matches!(o.lookup("/sub/"), Lookup::Found(_)));
        assert!(matches!(o.lookup("/sub"), Lookup::Directory));
        assert!(matches!(o.lookup("/a%20b.txt"), Lookup::Found(_)));
        assert!(matches!(o.lookup("/../etc/passwd"), Lookup::BadPath));
        assert!(matches!(o.lookup("/sub/%2e%2e/%2e%2e/etc/passwd"), Lookup::BadPath));
        assert!(matches!(o.lookup("/etc/passwd"), Lookup::NotFound), "a symlink out of the root");
        assert!(matches!(o.lookup("/nope"), Lookup::NotFound));
        assert!(matches!(o.lookup("/.env"), Lookup::NotFound), "dotfiles are not published");
        assert!(matches!(o.lookup("/%2eenv"), Lookup::NotFound));
        assert!(matches!(o.lookup("/.well-known/security.txt"), Lookup::Found(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
