//! Compression at the edge: which responses to compress, and gzip, brotli and zstd. The cache
//! compresses a stored object once and keeps every representation, so a hit never compresses
//! anything; the client's Accept-Encoding picks one.

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderMap};

use crate::directives::CacheControl;

/// Smaller bodies gain nothing worth the header bytes.
pub const MIN_SIZE: usize = 256;

/// Text-like types are worth compressing; images, video, archives and fonts already are.
pub fn compressible(headers: &HeaderMap, cc: &CacheControl) -> bool {
    if cc.no_transform || headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/manifest+json"
                | "application/wasm"
                | "image/svg+xml"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

/// gzip at the default level; `None` when it would not make the body smaller.
pub fn gzip(body: &[u8]) -> Option<Bytes> {
    if body.len() < MIN_SIZE {
        return None;
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3), flate2::Compression::default());
    enc.write_all(body).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < body.len()).then(|| Bytes::from(out))
}

/// Brotli at quality 6 (a CDN's on-the-fly setting: most of q11's gain at a fraction of the
/// time, which matters for multi-megabyte objects stored on a miss); `None` unless smaller.
pub fn brotli(body: &[u8]) -> Option<Bytes> {
    if body.len() < MIN_SIZE {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 3);
    let params = brotli::enc::BrotliEncoderParams { quality: 6, lgwin: 22, ..Default::default() };
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).ok()?;
    (out.len() < body.len()).then(|| Bytes::from(out))
}

/// zstd at level 6; `None` unless smaller.
pub fn zstd(body: &[u8]) -> Option<Bytes> {
    if body.len() < MIN_SIZE {
        return None;
    }
    let out = zstd::bulk::compress(body, 6).ok()?;
    (out.len() < body.len()).then(|| Bytes::from(out))
}

/// Every compressed representation worth keeping, best first.
pub fn all(body: &[u8]) -> Vec<(crate::key::Encoding, Bytes)> {
    use crate::key::Encoding;
    [(Encoding::Brotli, brotli(body)), (Encoding::Zstd, zstd(body)), (Encoding::Gzip, gzip(body))]
        .into_iter()
        .filter_map(|(e, b)| b.map(|b| (e, b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn h(ct: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        m
    }

    #[test]
    fn what_is_compressible() {
        let none = CacheControl::default();
        assert!(compressible(&h("text/html; charset=utf-8"), &none));
        assert!(compressible(&h("application/ld+json"), &none));
        assert!(compressible(&h("image/svg+xml"), &none));
        assert!(!compressible(&h("image/png"), &none));
        assert!(!compressible(&HeaderMap::new(), &none));
        assert!(!compressible(&h("text/css"), &CacheControl::parse("no-transform")));
        let mut encoded = h("text/css");
        encoded.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(!compressible(&encoded, &none));
    }

    #[test]
    fn gzip_round_trips_and_skips_small_bodies() {
        let body = "flotilla ".repeat(200);
        let gz = gzip(body.as_bytes()).unwrap();
        assert!(gz.len() < body.len() / 5);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, body);
        assert!(gzip(b"tiny").is_none());
    }

    #[test]
    fn brotli_and_zstd_round_trip() {
        let body = "flotilla caches and compresses ".repeat(300);
        let br = brotli(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut out).unwrap();
        assert_eq!(out, body.as_bytes());
        let zs = zstd(body.as_bytes()).unwrap();
        assert_eq!(zstd::bulk::decompress(&zs, body.len()).unwrap(), body.as_bytes());
        assert_eq!(all(body.as_bytes()).len(), 3);
        assert!(all(b"tiny").is_empty());
    }
}
