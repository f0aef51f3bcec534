//! The storage the cache layer shares across workers: both tiers behind one ledger, the
//! in-flight fetches (one per key), the hit-for-miss marks, and the record of invalidations.
//!
//! Every insert carries the ledger generation its fill started at (`since`), so nothing that
//! began before an invalidation can put back what it removed, in either tier. File work (disk
//! reads, writes, sweeps, deletions) runs on the blocking pool, never on the runtime that
//! called: the admin API's and the cluster applier's runtime also runs health checks and
//! heartbeats.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_cache::{DiskStore, Entry, Generation, Ledger, Lookup, MemoryStore, PathMatch, Scope};
use http::header::{HeaderMap, HeaderName};
use tokio::sync::watch;

use crate::Shared;

/// Keys whose last response could not be stored skip coalescing for this long, so uncacheable
/// URLs are not fetched one request at a time (Varnish's hit-for-miss).
const PASS_FOR: Duration = Duration::from_secs(10);

/// Disk writes queued or running at once (each is an fsync'd file of up to a quarter of the
/// disk budget, and holds its entry until written).
const MAX_DISK_WRITES: usize = 64;

/// Shared by all workers: the store, in-flight fetches, recent invalidations.
pub(crate) struct EdgeCache {
    pub store: MemoryStore,
    /// The disk tier, when configured and its directory could be opened.
    pub disk: Option<Arc<DiskStore>>,
    pub(super) max_object: usize,
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    pub(super) pass: moka::sync::Cache<String, ()>,
    /// Bytes fills hold while they receive bodies (`cache.fill_buffer`).
    pub(crate) fill_budget: super::fill::Budget,
    /// A fill not complete after this long stops storing (`cache.fill_timeout`).
    pub(super) fill_timeout: Duration,
    /// Concurrent compressions (one per CPU).
    pub(super) compressions: tokio::sync::Semaphore,
    /// Disk writes queued or running; past [`MAX_DISK_WRITES`] new objects stay in memory only.
    disk_writes: Arc<std::sync::atomic::AtomicUsize>,
    invalidations: Mutex<VecDeque<Invalidation>>,
    next_id: AtomicU64,
}

/// One applied invalidation, as the admin API reports it.
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub id: u64,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub all: bool,
    pub created_at: SystemTime,
    pub duration: Duration,
}

pub(super) enum Join {
    Leader(Flight),
    Follower(watch::Receiver<bool>),
}

/// The leader's claim on a key; dropping it (however the fetch ends) wakes the followers. It
/// owns the shared state so a background refresh can hold it beyond the request.
pub(super) struct Flight {
    shared: Arc<Shared>,
    key: String,
    done: watch::Sender<bool>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.shared.cache.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
        let _ = self.done.send(true);
    }
}

pub(super) fn join(shared: &Arc<Shared>, key: &str) -> Join {
    let mut map = shared.cache.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rx) = map.get(key) {
        return Join::Follower(rx.clone());
    }
    let (tx, rx) = watch::channel(false);
    map.insert(key.to_string(), rx);
    Join::Leader(Flight { shared: shared.clone(), key: key.to_string(), done: tx })
}

impl EdgeCache {
    pub(crate) fn new(cfg: &flotilla_config::CacheConfig) -> Self {
        // One ledger orders both tiers' invalidations and inserts.
        let ledger = Arc::new(Ledger::default());
        let disk = cfg.disk.as_ref().and_then(|d| match DiskStore::open(&d.path, d.size, ledger.clone()) {
            Ok(store) => {
                let (objects, bytes) = store.usage();
                tracing::info!(path = %d.path.display(), objects, bytes, "cache disk tier opened");
                Some(Arc::new(store))
            }
            Err(e) => {
                // Degrade to memory only: the edge keeps serving.
                tracing::error!(error = %e, "cache disk tier unavailable; caching in memory only");
                None
            }
        });
        Self {
            store: MemoryStore::new(cfg.memory, ledger),
            disk,
            max_object: cfg.max_object.min(usize::MAX as u64) as usize,
            inflight: Mutex::new(HashMap::new()),
            pass: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(PASS_FOR).build(),
            fill_budget: super::fill::Budget::new(cfg.fill_buffer),
            fill_timeout: cfg.fill_timeout,
            compressions: super::fill::compression_permits(),
            disk_writes: Arc::default(),
            invalidations: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Where a fill starts: what it stores later must not be covered by an invalidation since.
    pub(super) fn generation(&self) -> Generation {
        self.store.ledger().generation()
    }

    /// Applies an invalidation: in effect for every lookup, in both tiers, when this returns.
    /// Nothing here waits for the disk: its index hides what is pending at once, and the sweep
    /// and file deletions run on the blocking pool.
    pub(crate) fn invalidate(&self, paths: Vec<String>, tags: Vec<String>, all: bool) -> Invalidation {
        let started = std::time::Instant::now();
        let mut scopes = Vec::new();
        if all {
            scopes.push(Scope::All);
        } else {
            if !paths.is_empty() {
                scopes.push(Scope::paths(paths.iter().map(|p| PathMatch::parse(p)).collect()));
            }
            if !tags.is_empty() {
                scopes.push(Scope::Tags(tags.clone()));
            }
        }
        for scope in scopes {
            self.apply(scope);
        }
        let record = Invalidation {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            paths,
            tags,
            all,
            created_at: SystemTime::now(),
            duration: started.elapsed(),
        };
        let mut log = self.invalidations.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= 1000 {
            log.pop_front();
        }
        log.push_back(record.clone());
        record
    }

    /// Memory first (the ledger records it), then the disk index; the disk's leftovers go to
    /// the blocking pool.
    fn apply(&self, scope: Scope) {
        let at = self.store.invalidate(scope.clone());
        if let Some(disk) = &self.disk {
            let sweep = disk.invalidate(scope, at);
            if !sweep.is_empty() {
                let disk = disk.clone();
                off_runtime(move || disk.sweep(sweep));
            }
        }
    }

    /// Memory first; on a miss, the disk tier (off the runtime), promoting what it finds
    /// unless an invalidation came in meanwhile.
    pub(super) async fn lookup(&self, primary: &str, request: &HeaderMap) -> Lookup {
        let since = self.generation();
        let found = self.store.lookup(primary, request);
        let Some(disk) = self.disk.clone().filter(|_| !matches!(found, Lookup::Hit(_))) else { return found };
        // The index answers most misses without I/O; only a stored object is read, off the runtime.
        let Some(at) = disk.locate(primary, request) else { return found };
        match tokio::task::spawn_blocking(move || disk.read(at)).await {
            Ok(Some((entry, vary))) => {
                let entry = Arc::new(entry);
                self.store.insert_arc(primary.to_string(), vary, entry.clone(), since);
                Lookup::Hit(entry)
            }
            _ => found,
        }
    }

    /// Stores `entry` in memory, and in the background on disk, unless an invalidation since
    /// `since` covers it. True if it was stored.
    pub(super) fn insert(&self, primary: &str, vary: Vec<HeaderName>, entry: Arc<Entry>, since: Generation) -> bool {
        if !self.store.insert_arc(primary.to_string(), vary.clone(), entry.clone(), since) {
            return false;
        }
        let Some(disk) = self.disk.clone() else { return true };
        // A slow disk must not queue unbounded copies of what memory already holds (each queued
        // write keeps its entry alive): past the bound the object stays in memory only.
        if self.disk_writes.fetch_add(1, Ordering::AcqRel) >= MAX_DISK_WRITES {
            self.disk_writes.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        let (primary, writes) = (primary.to_string(), self.disk_writes.clone());
        off_runtime(move || {
            let before = disk.errors.load(Ordering::Relaxed);
            disk.insert(&primary, &vary, &entry, since);
            writes.fetch_sub(1, Ordering::AcqRel);
            if disk.errors.load(Ordering::Relaxed) != before {
                let e = disk.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tracing::warn!(error = e.as_deref().unwrap_or("?"), "cache disk write failed; the memory copy stays");
            }
        });
        true
    }

    /// Drops one URL's variants from both tiers by key: O(1) for the memory tier and O(variants)
    /// for the disk index, because it runs after every successful unsafe request (a predicate
    /// per POST would pile up in moka and be re-checked on every hit). Recorded in the ledger
    /// like any invalidation, so a fill of that URL already under way does not put it back.
    pub(super) fn remove(&self, primary: &str) {
        self.apply(Scope::Key(primary.to_string()));
    }

    pub(crate) fn invalidation(&self, id: u64) -> Option<Invalidation> {
        self.invalidations.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|i| i.id == id).cloned()
    }
}

/// Runs blocking file work on the blocking pool of the runtime we are on (a worker's, the
/// control plane's), or on a thread of its own when called outside any runtime.
fn off_runtime(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(f)),
        Err(_) => drop(std::thread::spawn(f)),
    }
}
