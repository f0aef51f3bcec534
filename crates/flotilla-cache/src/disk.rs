//! The disk tier: one file per stored response, so the cache survives restarts.
//!
//! Crash safety comes from the write protocol, not from recovery: an object is written to
//! `tmp/`, flushed with `fsync`, then renamed into `objects/` (atomic on POSIX), so a file in
//! `objects/` is either complete or absent. Each file also ends with a CRC-32 of everything
//! before it, checked on every read: a file damaged afterwards (a bad disk, a partial copy) is
//! deleted and treated as a miss — never served. At start the index is rebuilt from the files'
//! headers; leftovers in `tmp/` are deleted.
//!
//! Everything here blocks: the edge calls it from its blocking pool.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::freshness::{Freshness, Timing};
use crate::key::{self, Encoding};
use crate::store::{Entry, PathMatch};

const MAGIC: &[u8; 4] = b"FLC1";
/// Objects larger than this are never read back whole (a corrupt length cannot allocate more).
const MAX_FILE: u64 = 1 << 31;

/// What the index keeps per file: enough to find it, to invalidate it and to evict it.
#[derive(Debug, Clone)]
struct Meta {
    file: String,
    primary: String,
    secondary: String,
    vary: Vec<HeaderName>,
    host: String,
    path: String,
    tags: Vec<String>,
    size: u64,
    last_access: u64,
}

#[derive(Default)]
struct Index {
    /// Keyed by (primary, secondary).
    entries: HashMap<(String, String), Meta>,
    /// Per primary key: its Vary names and the secondary keys stored (lookups need the names
    /// to compute the secondary key, removals the secondaries, neither by scanning).
    primaries: HashMap<String, (Vec<HeaderName>, Vec<String>)>,
    bytes: u64,
    tick: u64,
}

impl Index {
    fn add(&mut self, m: Meta) -> Option<Meta> {
        self.bytes += m.size;
        let k = (m.primary.clone(), m.secondary.clone());
        let old = self.entries.insert(k, m.clone());
        if let Some(o) = &old {
            self.forget(o);
        }
        let p = self.primaries.entry(m.primary.clone()).or_insert_with(|| (m.vary.clone(), Vec::new()));
        p.0 = m.vary;
        p.1.push(m.secondary);
        old
    }

    fn take(&mut self, k: &(String, String)) -> Option<Meta> {
        let m = self.entries.remove(k)?;
        self.forget(&m);
        Some(m)
    }

    fn forget(&mut self, m: &Meta) {
        self.bytes -= m.size;
        if let Some(p) = self.primaries.get_mut(&m.primary) {
            p.1.retain(|s| *s != m.secondary);
            if p.1.is_empty() {
                self.primaries.remove(&m.primary);
            }
        }
    }

    /// Takes every variant of `primary` out of the index.
    fn take_primary(&mut self, primary: &str) -> Vec<Meta> {
        let secondaries = self.primaries.get(primary).map(|p| p.1.clone()).unwrap_or_default();
        secondaries.into_iter().filter_map(|s| self.take(&(primary.to_string(), s))).collect()
    }
}

/// Where a stored variant is: found from the in-memory index without touching the disk.
pub struct Located {
    file: String,
    vary: Vec<HeaderName>,
}

/// A byte-bounded directory of cached responses.
pub struct DiskStore {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    next: AtomicU64,
    /// Failed reads and writes (a full or broken disk); the edge exports it as a metric.
    pub errors: AtomicU64,
    /// Objects removed to stay within the budget.
    pub evictions: AtomicU64,
    /// The last write error, for the edge to log (this crate has no logger).
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl DiskStore {
    /// Opens (creating) `dir` and indexes what a previous run left there.
    pub fn open(dir: &Path, budget: u64) -> Result<Self, DiskError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskError::Io { path, source }
        };
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&objects).map_err(io(&objects))?;
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        // A write that never reached its rename is garbage.
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let store = DiskStore {
            dir: dir.to_path_buf(),
            budget,
            index: Mutex::new(Index::default()),
            next: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        let mut index = Index::default();
        for e in fs::read_dir(&objects).map_err(io(&objects))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match read_meta(&e.path()) {
                Some(mut m) => {
                    m.file = name;
                    if let Some(old) = index.add(m) {
                        // Two files for one key (a crash between rename and cleanup): keep one.
                        let _ = fs::remove_file(objects.join(old.file));
                    }
                }
                None => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        *store.index.lock().unwrap_or_else(|e| e.into_inner()) = index;
        store.evict();
        Ok(store)
    }

    /// (objects, bytes).
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        (idx.entries.len() as u64, idx.bytes)
    }

    /// Finds the variant for this request's Vary values in the index (no I/O; cheap enough for
    /// the request path, so misses never leave the runtime).
    pub fn locate(&self, primary: &str, request: &HeaderMap) -> Option<Located> {
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let vary = idx.primaries.get(primary)?.0.clone();
        let secondary = key::secondary(&vary, request);
        idx.tick += 1;
        let tick = idx.tick;
        let m = idx.entries.get_mut(&(primary.to_string(), secondary))?;
        m.last_access = tick;
        Some(Located { file: m.file.clone(), vary })
    }

    /// `locate` then `read`.
    pub fn lookup(&self, primary: &str, request: &HeaderMap) -> Option<(Entry, Vec<HeaderName>)> {
        self.read(self.locate(primary, request)?)
    }

    /// Reads and verifies a located variant (blocking); `None` if it is gone or damaged.
    pub fn read(&self, at: Located) -> Option<(Entry, Vec<HeaderName>)> {
        let Located { file, vary } = at;
        let path = self.dir.join("objects").join(&file);
        match read_object(&path) {
            Some(entry) => Some((entry, vary)),
            None => {
                // Damaged: drop it rather than serve it.
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.remove_where(|m| m.file == file);
                None
            }
        }
    }

    /// Writes `entry` (tmp → fsync → rename) and replaces what the key held.
    pub fn insert(&self, primary: &str, vary: &[HeaderName], entry: &Entry) {
        let bytes = encode(primary, vary, entry);
        let size = bytes.len() as u64;
        if size > self.budget / 4 {
            return;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let file = format!("{nanos:x}-{n:x}.obj");
        let tmp = self.dir.join("tmp").join(&file);
        let dest = self.dir.join("objects").join(&file);
        let written = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            return;
        }
        let meta = Meta {
            file,
            primary: primary.to_string(),
            secondary: entry.secondary.clone(),
            vary: vary.to_vec(),
            host: entry.host.clone(),
            path: entry.path.clone(),
            tags: entry.tags.clone(),
            size,
            last_access: 0,
        };
        let stale: Vec<String> = {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            idx.tick += 1;
            let mut meta = meta;
            meta.last_access = idx.tick;
            let mut stale = Vec::new();
            // A new Vary set replaces every variant of the key.
            if idx.primaries.get(primary).is_some_and(|p| p.0 != vary) {
                stale.extend(idx.take_primary(primary).into_iter().map(|m| m.file));
            }
            if let Some(old) = idx.add(meta) {
                stale.push(old.file);
            }
            stale
        };
        for f in stale {
            let _ = fs::remove_file(self.dir.join("objects").join(f));
        }
        self.evict();
    }

    /// Removes every variant of one primary key: O(variants), so the request path may call it
    /// (after each successful unsafe request).
    pub fn remove(&self, primary: &str) {
        let files: Vec<String> = {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            idx.take_primary(primary).into_iter().map(|m| m.file).collect()
        };
        for file in files {
            let _ = fs::remove_file(self.dir.join("objects").join(file));
        }
    }

    pub fn invalidate_paths(&self, paths: &[PathMatch]) {
        self.remove_where(|m| paths.iter().any(|p| p.matches(&m.path)));
    }

    pub fn invalidate_tags(&self, tags: &[String]) {
        self.remove_where(|m| m.tags.iter().any(|t| tags.contains(t)));
    }

    pub fn invalidate_all(&self) {
        self.remove_where(|_| true);
    }

    /// Drops matching entries from the index at once (lookups stop seeing them), then deletes
    /// their files.
    fn remove_where(&self, f: impl Fn(&Meta) -> bool) {
        let files: Vec<String> = {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<(String, String)> =
                idx.entries.iter().filter(|(_, m)| f(m)).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| idx.take(k)).map(|m| m.file).collect::<Vec<_>>()
        };
        for file in files {
            let _ = fs::remove_file(self.dir.join("objects").join(file));
        }
    }

    /// Least recently used first, until within budget.
    fn evict(&self) {
        let files: Vec<String> = {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            if idx.bytes <= self.budget {
                return;
            }
            let mut order: Vec<((String, String), u64)> =
                idx.entries.iter().map(|(k, m)| (k.clone(), m.last_access)).collect();
            order.sort_by_key(|(_, t)| *t);
            let mut files = Vec::new();
            for (k, _) in order {
                if idx.bytes <= self.budget * 9 / 10 {
                    break;
                }
                if let Some(m) = idx.take(&k) {
                    files.push(m.file);
                }
            }
            files
        };
        self.evictions.fetch_add(files.len() as u64, Ordering::Relaxed);
        for file in files {
            let _ = fs::remove_file(self.dir.join("objects").join(file));
        }
    }
}

// --- file format: MAGIC, fields, CRC-32 of everything before it (little-endian) ---

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
fn encode(primary: &str, vary: &[HeaderName], e: &Entry) -> Vec<u8> {
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
fn read_meta(path: &Path) -> Option<Meta> {
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
    })
}

fn names(r: &mut Reader<'_>) -> Option<Vec<HeaderName>> {
    let n = r.u64()?;
    (0..n.min(64)).map(|_| HeaderName::from_bytes(r.bytes()?).ok()).collect()
}

fn read_object(path: &Path) -> Option<Entry> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, secondary: &str, tags: &[&str], body: &str) -> Entry {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body.to_string()),
            encoded: vec![(Encoding::Gzip, Bytes::from_static(b"gz"))],
            freshness: Freshness {
                lifetime: Duration::from_secs(60),
                timing: Timing { request_time: now, response_time: now, date: Some(now), age: Duration::ZERO },
                no_cache: false,
                must_revalidate: true,
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::ZERO,
            },
            secondary: secondary.into(),
            vary: vec![],
            host: "example.com".into(),
            path: path.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            shared: true,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flotilla-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_a_reopen_and_invalidates() {
        let d = dir("reopen");
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        s.insert("k1", &[], &entry("/a", "", &["t1"], "hello"));
        s.insert("k2", &[], &entry("/img/b", "", &["t2"], "world"));
        drop(s);
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.usage().0, 2);
        let (e, _) = s.lookup("k1", &HeaderMap::new()).unwrap();
        assert_eq!((e.body.as_ref(), e.path.as_str()), (&b"hello"[..], "/a"));
        assert!(e.freshness.must_revalidate && e.freshness.lifetime == Duration::from_secs(60));
        assert!(e.shared);
        assert_eq!(e.encoded[0].0, Encoding::Gzip);
        s.invalidate_tags(&["t2".to_string()]);
        assert!(s.lookup("k2", &HeaderMap::new()).is_none());
        s.invalidate_paths(&[PathMatch::parse("/a")]);
        assert!(s.lookup("k1", &HeaderMap::new()).is_none());
        assert_eq!(fs::read_dir(d.join("objects")).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_or_torn_file_is_never_served() {
        let d = dir("torn");
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        s.insert("k", &[], &entry("/a", "", &[], "the full body"));
        let file = fs::read_dir(d.join("objects")).unwrap().next().unwrap().unwrap().path();
        let mut bytes = fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xFF;
        fs::write(&file, &bytes).unwrap();
        assert!(s.lookup("k", &HeaderMap::new()).is_none());
        assert_eq!(s.errors.load(Ordering::Relaxed), 1);
        // A torn file (cut short) and tmp leftovers are dropped at the next open.
        s.insert("k", &[], &entry("/a", "", &[], "the full body"));
        let file = fs::read_dir(d.join("objects")).unwrap().next().unwrap().unwrap().path();
        let bytes = fs::read(&file).unwrap();
        fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        fs::write(d.join("tmp/leftover.obj"), b"partial").unwrap();
        drop(s);
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.usage(), (0, 0));
        assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let d = dir("evict");
        let s = DiskStore::open(&d, 64 * 1024).unwrap();
        let body = "x".repeat(10_000);
        for i in 0..5 {
            s.insert(&format!("k{i}"), &[], &entry(&format!("/{i}"), "", &[], &body));
        }
        // Touch k0 so it is the most recently used.
        assert!(s.lookup("k0", &HeaderMap::new()).is_some());
        for i in 5..10 {
            s.insert(&format!("k{i}"), &[], &entry(&format!("/{i}"), "", &[], &body));
        }
        let (_, bytes) = s.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(s.lookup("k0", &HeaderMap::new()).is_some(), "recently used survives");
        assert!(s.lookup("k1", &HeaderMap::new()).is_none(), "least recently used goes first");
        assert!(s.evictions.load(Ordering::Relaxed) > 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn removing_a_key_drops_all_its_variants_and_nothing_else() {
        let d = dir("remove");
        let s = DiskStore::open(&d, 1 << 20).unwrap();
        let vary = vec![HeaderName::from_static("accept-language")];
        let req = |lang: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept-language", lang.parse().unwrap());
            h
        };
        for lang in ["en", "fr"] {
            s.insert("k", &vary, &entry("/page", &key::secondary(&vary, &req(lang)), &[], lang));
        }
        s.insert("other", &[], &entry("/page", "", &[], "kept"));
        assert_eq!(s.usage().0, 3);
        assert_eq!(s.lookup("k", &req("fr")).unwrap().0.body.as_ref(), b"fr");
        s.remove("k");
        assert!(s.lookup("k", &req("en")).is_none() && s.lookup("k", &req("fr")).is_none());
        assert_eq!(s.usage().0, 1);
        assert_eq!(fs::read_dir(d.join("objects")).unwrap().count(), 1, "the variants' files are deleted");
        s.remove("k");
        assert!(s.lookup("other", &HeaderMap::new()).is_some());
        fs::remove_dir_all(&d).unwrap();
    }
}
