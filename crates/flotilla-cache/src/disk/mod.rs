//! The disk tier: one file per stored response, so the cache survives restarts.
//!
//! Crash safety comes from the write protocol, not from recovery: an object is written to
//! `tmp/`, flushed with `fsync`, then renamed into `objects/` (atomic on POSIX), so a file in
//! `objects/` is either complete or absent. Each file also ends with a CRC-32 of everything
//! before it, checked on every read: a file damaged afterwards (a bad disk, a partial copy) is
//! deleted and treated as a miss — never served. At start the index is rebuilt from the files'
//! headers; leftovers in `tmp/` are deleted.
//!
//! Two kinds of calls. The cheap ones touch only the in-memory index, under short lock holds,
//! and may run anywhere, request path included: [`DiskStore::locate`], [`DiskStore::remove`],
//! [`DiskStore::invalidate`]. The ones that do file I/O or walk the whole index block, and the
//! edge runs them on its blocking pool: [`DiskStore::read`], [`DiskStore::insert`] (which also
//! evicts), [`DiskStore::sweep`], [`DiskStore::delete`]. Whole-index walks go in chunks of
//! [`CHUNK`] entries, so no lookup waits behind an invalidation or an eviction of a large disk.
//!
//! Inserts are admitted through the shared [`Ledger`]: a write that started before an
//! invalidation never puts back what it removed, however late it finishes.

mod format;
mod index;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName};

use crate::key;
use crate::ledger::{Generation, Ledger, Scope};
use crate::store::Entry;
use index::{Index, Meta};

/// Entries handled per lock hold in whole-index walks (a few hundred microseconds).
pub const CHUNK: usize = 4096;
/// Invalidations waiting for their sweep; past this, the next one empties the disk tier
/// instead (over-removing is safe; every lookup checks what is pending).
const MAX_PENDING: usize = 64;

/// Where a stored variant is: found from the in-memory index without touching the disk.
pub struct Located {
    file: String,
    key: (String, String),
    vary: Vec<HeaderName>,
}

/// Files that left the index and are to be deleted (off the runtime: [`DiskStore::delete`]).
#[must_use]
#[derive(Debug, Default)]
pub struct Doomed(Vec<String>);

impl Doomed {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The rest of an invalidation: what [`DiskStore::sweep`] does off the runtime.
#[must_use]
#[derive(Debug)]
pub struct Sweep {
    /// The pending record to sweep, if the invalidation left one.
    pending: Option<u64>,
    doomed: Doomed,
}

impl Sweep {
    /// Nothing left to do (a key that had nothing on disk).
    pub fn is_empty(&self) -> bool {
        self.pending.is_none() && self.doomed.is_empty()
    }
}

/// A byte-bounded directory of cached responses.
pub struct DiskStore {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    ledger: Arc<Ledger>,
    next: AtomicU64,
    evicting: AtomicBool,
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
    /// Opens (creating) `dir` and indexes what a previous run left there. Inserts are admitted
    /// through `ledger` (the one the memory tier records invalidations in).
    pub fn open(dir: &Path, budget: u64, ledger: Arc<Ledger>) -> Result<Self, DiskError> {
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
        let mut index = Index::default();
        for e in fs::read_dir(&objects).map_err(io(&objects))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match format::read_meta(&e.path()) {
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
        let store = DiskStore {
            dir: dir.to_path_buf(),
            budget,
            index: Mutex::new(index),
            ledger,
            next: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        store.evict();
        Ok(store)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (objects, bytes).
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.len() as u64, idx.bytes)
    }

    /// Finds the variant for this request's Vary values in the index (no I/O; cheap enough for
    /// the request path, so misses never leave the runtime).
    pub fn locate(&self, primary: &str, request: &HeaderMap) -> Option<Located> {
        let mut idx = self.index();
        let vary = idx.vary(primary)?.clone();
        let key = (primary.to_string(), key::secondary(&vary, request));
        let file = idx.touch(&key)?.file.clone();
        Some(Located { file, key, vary })
    }

    /// `locate` then `read`.
    pub fn lookup(&self, primary: &str, request: &HeaderMap) -> Option<(Entry, Vec<HeaderName>)> {
        self.read(self.locate(primary, request)?)
    }

    /// Reads and verifies a located variant (blocking); `None` if it is gone or damaged.
    pub fn read(&self, at: Located) -> Option<(Entry, Vec<HeaderName>)> {
        let Located { file, key, vary } = at;
        let path = self.objects().join(&file);
        if let Some(entry) = format::read_object(&path) {
            return Some((entry, vary));
        }
        if path.exists() {
            // Damaged: drop it rather than serve it. (Gone is no error: an invalidation or an
            // eviction deleted it since it was located.)
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut idx = self.index();
            if idx.touch(&key).is_some_and(|m| m.file == file) {
                idx.take(&key);
            }
            drop(idx);
            let _ = fs::remove_file(&path);
        }
        None
    }

    fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Writes `entry` (tmp → fsync → rename) and replaces what the key held, unless an
    /// invalidation recorded since `since` (when its fill started) covers it; then evicts if the
    /// budget is exceeded. Blocking. True if stored.
    pub fn insert(&self, primary: &str, vary: &[HeaderName], entry: &Entry, since: Generation) -> bool {
        let bytes = format::encode(primary, vary, entry);
        let size = bytes.len() as u64;
        if size > self.budget / 4 {
            return false;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let file = format!("{nanos:x}-{n:x}.obj");
        let tmp = self.dir.join("tmp").join(&file);
        let dest = self.objects().join(&file);
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
            return false;
        }
        let mut meta = Meta {
            file: file.clone(),
            primary: primary.to_string(),
            secondary: entry.secondary.clone(),
            vary: vary.to_vec(),
            host: entry.host.clone(),
            path: entry.path.clone(),
            tags: entry.tags.clone(),
            size,
            last_access: 0,
            generation: 0,
        };
        let admitted = {
            let mut idx = self.index();
            // Checked and added in one hold of the index lock: an invalidation recorded later
            // finds the entry in the index (or pending hides it); one recorded earlier refuses it.
            self.ledger.admit(since, primary, &entry.path, &entry.tags, |at| {
                idx.tick += 1;
                meta.last_access = idx.tick;
                meta.generation = at.0;
                let mut stale = Vec::new();
                // A new Vary set replaces every variant of the key.
                if idx.vary(primary).is_some_and(|v| v != vary) {
                    stale.extend(idx.take_primary(primary).into_iter().map(|m| m.file));
                }
                stale.extend(idx.add(meta).map(|m| m.file));
                stale
            })
        };
        let stored = admitted.is_some();
        self.delete(Doomed(admitted.unwrap_or_else(|| vec![file])));
        self.evict();
        stored
    }

    /// Applies an invalidation the ledger recorded at `at`, in effect for lookups when this
    /// returns (no I/O, no walk of the index: a key's variants are taken out at once, a path or
    /// tag is left pending, everything swaps in an empty index); [`DiskStore::sweep`] finishes
    /// it off the runtime.
    pub fn invalidate(&self, scope: Scope, at: Generation) -> Sweep {
        let mut idx = self.index();
        match scope {
            Scope::Key(primary) => {
                let files = idx.take_primary(&primary).into_iter().map(|m| m.file).collect();
                Sweep { pending: None, doomed: Doomed(files) }
            }
            Scope::Paths(_) | Scope::Tags(_) if idx.pending.len() < MAX_PENDING => {
                idx.pending.push((at.0, scope));
                Sweep { pending: Some(at.0), doomed: Doomed::default() }
            }
            // Everything (or more invalidations waiting than lookups should check): a new, empty
            // index now; the old one's files are deleted by the sweep.
            _ => {
                let tick = idx.tick;
                let old = std::mem::take(&mut *idx);
                idx.tick = tick;
                drop(idx);
                let files = old.slots_into_files();
                Sweep { pending: None, doomed: Doomed(files) }
            }
        }
    }

    /// Removes what a pending invalidation matches from the index, a chunk at a time, then
    /// deletes the files. Blocking.
    pub fn sweep(&self, sweep: Sweep) {
        let mut doomed = sweep.doomed;
        if let Some(g) = sweep.pending {
            let mut i = 0;
            loop {
                let mut idx = self.index();
                let Some(at) = idx.pending.iter().position(|(pg, _)| *pg == g) else { break };
                let scope = idx.pending[at].1.clone();
                let end = (i + CHUNK).min(idx.slot_count());
                for s in i..end {
                    let hit =
                        idx.slot(s).is_some_and(|m| m.generation < g && scope.matches(&m.primary, &m.path, &m.tags));
                    if hit {
                        doomed.0.extend(idx.take_slot(s).map(|m| m.file));
                    }
                }
                i = end;
                if i >= idx.slot_count() {
                    idx.pending.retain(|(pg, _)| *pg != g);
                    break;
                }
            }
        }
        self.delete(doomed);
    }

    /// Deletes files that left the index. Blocking.
    pub fn delete(&self, doomed: Doomed) {
        let objects = self.objects();
        for file in doomed.0 {
            let _ = fs::remove_file(objects.join(file));
        }
    }

    /// Least recently used first, until within budget: the index is copied and the victims
    /// removed in chunks, and only one eviction runs at a time. Blocking.
    fn evict(&self) {
        if self.index().bytes <= self.budget || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut order: Vec<(u64, usize, u64)> = Vec::new();
        let mut i = 0;
        let excess = loop {
            let idx = self.index();
            let end = (i + CHUNK).min(idx.slot_count());
            order.extend((i..end).filter_map(|s| idx.slot(s).map(|m| (m.last_access, s, m.size))));
            i = end;
            if i >= idx.slot_count() {
                break idx.bytes.saturating_sub(self.budget * 9 / 10);
            }
        };
        order.sort_unstable();
        let mut freed = 0;
        let victims: Vec<(u64, usize, u64)> = order
            .into_iter()
            .take_while(|(_, _, size)| {
                let more = freed < excess;
                freed += size;
                more
            })
            .collect();
        let mut doomed = Doomed::default();
        for chunk in victims.chunks(CHUNK) {
            let mut idx = self.index();
            for &(last_access, s, _) in chunk {
                // Used again since it was chosen (or another object in its slot): it stays.
                if idx.slot(s).is_some_and(|m| m.last_access == last_access) {
                    doomed.0.extend(idx.take_slot(s).map(|m| m.file));
                }
            }
        }
        self.evictions.fetch_add(doomed.0.len() as u64, Ordering::Relaxed);
        self.delete(doomed);
        self.evicting.store(false, Ordering::Release);
    }
}

impl Index {
    fn slots_into_files(self) -> Vec<String> {
        (0..self.slot_count()).filter_map(|i| self.slot(i).map(|m| m.file.clone())).collect()
    }
}
