//! The disk tier's file format: `MAGIC`, the index fields (what [`super::DiskStore::open`]
//! reads to rebuild its index), the response, and a CRC-32 of everything before it
//! (little-endian). A file whose CRC does not match is never used.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::index::Meta;
use crate::freshness::{Freshness, Timing};
use crate::key::Encoding;
use crate::store::Entry;

const MAGIC: &[u8; 4] = b"FLC1";
/// Objects larger than this are never read back whole (a corrupt length cannot allocate more).
const MAX_FILE: u64 = 1 << 31;

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn time(&mut self, t: SystemTime) {
        self.u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_le_bytes(head.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn time(&mut self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(self.u64()?))
    }
    fn list(&mut self) -> Option<Vec<String>> {
        let n = self.u64()?;
        (0..n.min(10_000)).map(|_| self.string()).collect()
    }
}

fn encoding_code(e: Encoding) -> u64 {
    match e {
        Encoding::Brotli => 1,
        Encoding::Zstd => 2,
        Encoding::Gzip => 3,
        Encoding::Identity => 0,
    }
}

fn encoding_from(c: u64) -> Option<Encoding> {
    Some(match c {
        1 => Encoding::Brotli,
        2 => Encoding::Zstd,
        3 => Encoding::Gzip,
        0 => Encoding::Identity,
        _ => return None,
    })
}

/// Header fields first (what `open` reads to index a file), then the bodies.
pub(super) fn encode(primary: &str, vary: &[HeaderName], e: &Entry) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(e.body.len() + 1024));
    w.0.extend_from_slice(MAGIC);
    w.bytes(primary.as_bytes());
    w.bytes(e.secondary.as_bytes());
    w.u64(vary.len() as u64);
    for v in vary {
        w.bytes(v.as_str().as_bytes());
    }
    w.bytes(e.host.as_bytes());
    w.bytes(e.path.as_bytes());
    w.u64(e.tags.len() as u64);
    for t in &e.tags {
        w.bytes(t.as_bytes());
    }
    // The Vary names the origin sent (before the edge added Accept-Encoding).
    w.u64(e.vary.len() as u64);
    for v in &e.vary {
        w.bytes(v.as_str().as_bytes());
    }
    w.u64(u64::from(e.status.as_u16()));
    w.u64(e.headers.len() as u64);
    for (k, v) in &e.headers {
        w.bytes(k.as_str().as_bytes());
        w.bytes(v.as_bytes());
    }
    let f = &e.freshness;
    w.u64(f.lifetime.as_millis() as u64);
    w.time(f.timing.request_time);
    w.time(f.timing.response_time);
    w.u64(f.timing.date.map_or(0, |d| d.duration_since(UNIX_EPOCH).map_or(0, |x| x.as_millis() as u64 + 1)));
    w.u64(f.timing.age.as_millis() as u64);
    w.u64(u64::from(f.no_cache) | (u64::from(f.must_revalidate) << 1) | (u64::from(e.shared) << 2));
    w.u64(f.stale_while_revalidate.as_millis() as u64);
    w.u64(f.stale_if_error.as_millis() as u64);
    w.bytes(&e.body);
    w.u64(e.encoded.len() as u64);
    for (enc, b) in &e.encoded {
        w.u64(encoding_code(*enc));
        w.bytes(b);
    }
    let mut crc = flate2::Crc::new();
    crc.update(&w.0);
    let sum = crc.sum();
    w.0.extend_from_slice(&sum.to_le_bytes());
    w.0
}

fn read_all(path: &Path) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if !(8..=MAX_FILE).contains(&len) {
        return None;
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf).ok()?;
    let (body, sum) = buf.split_at_checked(buf.len() - 4)?;
    let mut crc = flate2::Crc::new();
    crc.update(body);
    (crc.sum().to_le_bytes() == sum && body.starts_with(MAGIC)).then(|| {
        buf.truncate(buf.len() - 4);
        buf
    })
}

/// The index fields only (the file is read whole and checked, so a torn file is never indexed).
pub(super) fn read_meta(path: &Path) -> Option<Meta> {
    let buf = read_all(path)?;
    let size = buf.len() as u64 + 4;
    head(&mut Reader(&buf[4..]), size)
}

/// The fields before the response itself: what the index needs.
fn head(r: &mut Reader<'_>, size: u64) -> Option<Meta> {
    Some(Meta {
        file: String::new(),
        primary: r.string()?,
        secondary: r.string()?,
        vary: names(r)?,
        host: r.string()?,
        path: r.string()?,
        tags: r.list()?,
        size,
        last_access: 0,
        generation: 0,
    })
}

fn names(r: &mut Reader<'_>) -> Option<Vec<HeaderName>> {
    let n = r.u64()?;
    (0..n.min(64)).map(|_| HeaderName::from_bytes(r.bytes()?).ok()).collect()
}

pub(super) fn read_object(path: &Path) -> Option<Entry> {
    let buf = read_all(path)?;
    let mut r = Reader(&buf[4..]);
    let Meta { secondary, host, path: path_s, tags, .. } = head(&mut r, 0)?;
    let origin_vary = names(&mut r)?;
    let status = StatusCode::from_u16(u16::try_from(r.u64()?).ok()?).ok()?;
    let nh = r.u64()?;
    let mut headers = HeaderMap::new();
    for _ in 0..nh.min(1000) {
        let k = HeaderName::from_bytes(r.bytes()?).ok()?;
        let v = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(k, v);
    }
    let lifetime = Duration::from_millis(r.u64()?);
    let request_time = r.time()?;
    let response_time = r.time()?;
    let date = match r.u64()? {
        0 => None,
        ms => Some(UNIX_EPOCH + Duration::from_millis(ms - 1)),
    };
    let age = Duration::from_millis(r.u64()?);
    let flags = r.u64()?;
    let stale_while_revalidate = Duration::from_millis(r.u64()?);
    let stale_if_error = Duration::from_millis(r.u64()?);
    let body = Bytes::copy_from_slice(r.bytes()?);
    let ne = r.u64()?;
    let mut encoded = Vec::new();
    for _ in 0..ne.min(8) {
        let enc = encoding_from(r.u64()?)?;
        encoded.push((enc, Bytes::copy_from_slice(r.bytes()?)));
    }
    Some(Entry {
        status,
        headers,
        body,
        encoded,
        freshness: Freshness {
            lifetime,
            timing: Timing { request_time, response_time, date, age },
            no_cache: flags & 1 != 0,
            must_revalidate: flags & 2 != 0,
            stale_while_revalidate,
            stale_if_error,
        },
        secondary,
        vary: origin_vary,
        host,
        path: path_s,
        tags,
        // Files from before this flag read as not shared: the safe side.
        shared: flags & 4 != 0,
    })
}
