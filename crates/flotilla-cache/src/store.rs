//! The memory tier: primary key → the stored variants of that URL (one per Vary secondary key).
//! moka gives a byte-bounded cache with TinyLFU admission and LRU eviction; invalidation by
//! path, URL or tag uses its predicates, which hide matching entries from lookups at once.
//! Every insert goes through the [`Ledger`], so a fill that started before an invalidation
//! cannot put back what it removed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use crate::freshness::Freshness;
use crate::key;
use crate::ledger::{Generation, Ledger, Scope};

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// As received, minus hop-by-hop fields, `Age` and `Set-Cookie`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Compressed representations (brotli, zstd, gzip), when the behaviour compresses and each
    /// was worth it.
    pub encoded: Vec<(crate::key::Encoding, Bytes)>,
    pub freshness: Freshness,
    /// The request's values for the response's Vary headers.
    pub secondary: String,
    /// The header names `secondary` was built from (the origin's Vary, before the edge added
    /// Accept-Encoding for its own compressed representation).
    pub vary: Vec<HeaderName>,
    /// Lower-case host and path of the request it answered (for invalidation).
    pub host: String,
    pub path: String,
    /// From `Surrogate-Key` / `Cache-Tag`.
    pub tags: Vec<String>,
    /// The origin said any client may get it (`public`, `s-maxage`, `CDN-Cache-Control`): only
    /// such entries answer requests that carry credentials (see [`crate::credentials`]).
    pub shared: bool,
}

/// What an entry costs beyond its bytes: the Entry and its Arc, the HeaderMap's tables, the
/// strings, and moka's own node, deques and sketch slot. Measured, not guessed: 40 000 small
/// objects cost ~1.9 KiB each in RSS, so the budget in the config is what the process spends.
const ENTRY_OVERHEAD: usize = 1280;
/// Per header field: its bucket in the map plus the value's own allocation.
const HEADER_OVERHEAD: usize = 64;

impl Entry {
    fn weight(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD).sum();
        let encoded: usize = self.encoded.iter().map(|(_, b)| b.len()).sum();
        let strings =
            self.host.len() + self.path.len() + self.secondary.len() + self.tags.iter().map(String::len).sum::<usize>();
        (self.body.len() + encoded + headers + strings + ENTRY_OVERHEAD) as u64
    }
}

/// All stored variants of one primary key.
#[derive(Debug, Default)]
pub struct Variants {
    pub vary: Vec<HeaderName>,
    pub entries: Vec<Arc<Entry>>,
    /// The ledger generation it was inserted at: older than the last "invalidate everything"
    /// means gone, whatever moka's clock says.
    generation: u64,
}

/// Which entries an invalidation removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// `/img/*` → every path starting with `/img/`; `/*` → everything.
    Prefix(String),
}

impl PathMatch {
    pub fn parse(p: &str) -> Self {
        match p.strip_suffix('*') {
            Some(prefix) => PathMatch::Prefix(prefix.to_string()),
            None => PathMatch::Exact(p.to_string()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

pub enum Lookup {
    Miss,
    /// The URL is stored, but not for this request's Vary values.
    VaryMiss,
    Hit(Arc<Entry>),
}

pub struct MemoryStore {
    cache: moka::sync::Cache<String, Arc<Variants>>,
    evictions: Arc<std::sync::atomic::AtomicU64>,
    ledger: Arc<Ledger>,
    /// The generation of the last "invalidate everything".
    cleared: AtomicU64,
}

impl MemoryStore {
    /// A store whose invalidations are recorded in `ledger` (shared with the disk tier, so one
    /// generation orders both).
    pub fn new(budget_bytes: u64, ledger: Arc<Ledger>) -> Self {
        let evictions = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|k: &String, v: &Arc<Variants>| {
                let w: u64 = v.entries.iter().map(|e| e.weight()).sum::<u64>() + k.len() as u64;
                w.min(u64::from(u32::MAX)) as u32
            })
            .support_invalidation_closures()
            .eviction_listener({
                let evictions = evictions.clone();
                move |_k, _v, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        evictions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .build();
        Self { cache, evictions, ledger, cleared: AtomicU64::new(0) }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    fn live(&self, primary: &str) -> Option<Arc<Variants>> {
        self.cache.get(primary).filter(|v| v.generation >= self.cleared.load(Ordering::Acquire))
    }

    pub fn lookup(&self, primary: &str, request: &HeaderMap) -> Lookup {
        let Some(variants) = self.live(primary) else { return Lookup::Miss };
        let secondary = key::secondary(&variants.vary, request);
        match variants.entries.iter().find(|e| e.secondary == secondary) {
            Some(e) => Lookup::Hit(e.clone()),
            None => Lookup::VaryMiss,
        }
    }

    /// Stores `entry` for `primary`, replacing the variant with the same secondary key (a
    /// response that varies on a different set of headers replaces all variants), unless an
    /// invalidation since `since` (when the fill started) covers it. True if stored.
    pub fn insert(&self, primary: String, vary: Vec<HeaderName>, entry: Entry, since: Generation) -> bool {
        self.insert_arc(primary, vary, Arc::new(entry), since)
    }

    /// As [`MemoryStore::insert`], for an entry the caller keeps serving from.
    pub fn insert_arc(&self, primary: String, vary: Vec<HeaderName>, entry: Arc<Entry>, since: Generation) -> bool {
        let ledger = self.ledger.clone();
        ledger
            .admit(since, &primary, &entry.path, &entry.tags, |at| {
                let mut next = Variants { vary: vary.clone(), entries: vec![entry.clone()], generation: at.0 };
                if let Some(old) = self.live(&primary) {
                    if old.vary == vary {
                        let others = old.entries.iter().filter(|e| e.secondary != entry.secondary);
                        next.entries.extend(others.take(31).cloned());
                    }
                }
                self.cache.insert(primary.clone(), Arc::new(next));
            })
            .is_some()
    }

    /// Applies any invalidation (see the methods below); returns the generation it was recorded at.
    pub fn invalidate(&self, scope: Scope) -> Generation {
        match scope {
            Scope::All => self.invalidate_all(),
            Scope::Paths(paths) => self.invalidate_paths(paths),
            Scope::Tags(tags) => self.invalidate_tags(tags),
            Scope::Key(primary) => self.remove(&primary),
        }
    }

    /// Drops every variant of one key (O(1): the request path calls it after unsafe methods).
    pub fn remove(&self, primary: &str) -> Generation {
        self.ledger.record(Scope::Key(primary.to_string()), |_| self.cache.invalidate(primary)).0
    }

    /// Removes every entry whose path matches one of `paths` (any host).
    pub fn invalidate_paths(&self, paths: Vec<PathMatch>) -> Generation {
        if paths.iter().any(|p| *p == PathMatch::Prefix("/".into())) {
            return self.invalidate_all();
        }
        self.ledger
            .record(Scope::Paths(paths.clone()), |_| {
                self.predicate(move |v| v.entries.iter().any(|e| paths.iter().any(|p| p.matches(&e.path))))
            })
            .0
    }

    pub fn invalidate_tags(&self, tags: Vec<String>) -> Generation {
        self.ledger
            .record(Scope::Tags(tags.clone()), |_| {
                self.predicate(move |v| v.entries.iter().any(|e| e.tags.iter().any(|t| tags.contains(t))))
            })
            .0
    }

    pub fn invalidate_all(&self) -> Generation {
        self.ledger
            .record(Scope::All, |g| {
                self.cleared.store(g.0, Ordering::Release);
                self.cache.invalidate_all();
            })
            .0
    }

    fn predicate(&self, f: impl Fn(&Arc<Variants>) -> bool + Send + Sync + 'static) {
        if self.cache.invalidate_entries_if(move |_, v| f(v)).is_err() {
            // Only fails if closures were not enabled at build time, which `new` always does.
            self.cache.invalidate_all();
        }
    }

    /// Entries evicted to stay within the budget (not invalidations or replacements).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (entries, weighted bytes) — moka's counts are eventually consistent.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::directives::CacheControl;
    use crate::freshness::Timing;

    fn entry(host: &str, path: &str, secondary: &str, tags: &[&str], body: usize) -> Entry {
        let now = SystemTime::now();
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            encoded: vec![],
            freshness: Freshness::new(
                &CacheControl::default(),
                Duration::from_secs(60),
                Timing::new(now, now, &HeaderMap::new()),
                None,
            ),
            secondary: secondary.into(),
            vary: vec![],
            host: host.into(),
            path: path.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            shared: false,
        }
    }

    fn hit(s: &MemoryStore, key: &str) -> bool {
        matches!(s.lookup(key, &HeaderMap::new()), Lookup::Hit(_))
    }

    #[test]
    fn variants_by_vary_and_replacement() {
        let s = MemoryStore::new(1 << 20, Arc::default());
        let ae = vec![http::header::ACCEPT_ENCODING];
        let mut br = HeaderMap::new();
        br.insert(http::header::ACCEPT_ENCODING, "br".parse().unwrap());
        s.insert("k".into(), ae.clone(), entry("h", "/a", &key::secondary(&ae, &br), &[], 10), s.ledger().generation());
        assert!(matches!(s.lookup("k", &br), Lookup::Hit(_)));
        assert!(matches!(s.lookup("k", &HeaderMap::new()), Lookup::VaryMiss));
        s.insert(
            "k".into(),
            ae.clone(),
            entry("h", "/a", &key::secondary(&ae, &HeaderMap::new()), &[], 10),
            s.ledger().generation(),
        );
        assert!(matches!(s.lookup("k", &br), Lookup::Hit(_)), "other variants are kept");
        assert!(hit(&s, "k"));
        assert!(matches!(s.lookup("nope", &br), Lookup::Miss));
    }

    #[test]
    fn invalidation_by_path_prefix_key_and_tag() {
        let s = MemoryStore::new(1 << 20, Arc::default());
        s.insert("1".into(), vec![], entry("a", "/static/app.css", "", &[], 10), s.ledger().generation());
        s.insert("2".into(), vec![], entry("a", "/img/1.png", "", &["product-42"], 10), s.ledger().generation());
        s.insert("3".into(), vec![], entry("a", "/img/2.png", "", &[], 10), s.ledger().generation());
        s.insert("4".into(), vec![], entry("b", "/page", "", &[], 10), s.ledger().generation());
        s.invalidate_tags(vec!["product-42".into()]);
        assert!(!hit(&s, "2") && hit(&s, "3"));
        s.invalidate_paths(vec![PathMatch::parse("/img/*")]);
        assert!(!hit(&s, "3") && hit(&s, "1"));
        s.remove("4");
        assert!(!hit(&s, "4"));
        s.invalidate_paths(vec![PathMatch::parse("/*")]);
        assert!(!hit(&s, "1"));
    }

    /// The race the ledger closes, step by step: a fill starts, an invalidation covering it
    /// lands, then the fill tries to insert.
    #[test]
    fn a_fill_that_started_before_an_invalidation_does_not_undo_it() {
        let s = MemoryStore::new(1 << 20, Arc::default());
        let cases = [
            ("path", Scope::Paths(vec![PathMatch::parse("/a*")])),
            ("tag", Scope::Tags(vec!["t".into()])),
            ("key", Scope::Key("k".into())),
            ("all", Scope::All),
        ];
        for (what, scope) in cases {
            assert!(s.insert("k".into(), vec![], entry("h", "/a", "", &["t"], 10), s.ledger().generation()));
            let fill = s.ledger().generation();
            assert!(s.invalidate(scope) > fill);
            assert!(!hit(&s, "k"), "{what}: removed");
            assert!(!s.insert("k".into(), vec![], entry("h", "/a", "", &["t"], 10), fill), "{what}: refused");
            assert!(!hit(&s, "k"), "{what}: still removed");
            // Objects the invalidation does not cover are stored, as are later fills.
            assert!(s.insert("other".into(), vec![], entry("h", "/b", "", &[], 10), fill) || what == "all");
            assert!(s.insert("k".into(), vec![], entry("h", "/a", "", &["t"], 10), s.ledger().generation()));
            assert!(hit(&s, "k"), "{what}");
        }
    }

    #[test]
    fn the_byte_budget_is_enforced() {
        let s = MemoryStore::new(1 << 20, Arc::default());
        for i in 0..64 {
            s.insert(
                format!("k{i}"),
                vec![],
                entry("h", &format!("/{i}"), "", &[], 64 * 1024),
                s.ledger().generation(),
            );
        }
        let (_, bytes) = s.usage();
        assert!(bytes <= 1 << 20, "{bytes} bytes stored in a 1 MiB budget");
    }

    #[test]
    fn evictions_are_counted() {
        let s = MemoryStore::new(64 * 1024, Arc::default());
        for i in 0..40 {
            s.insert(format!("k{i}"), vec![], entry("h", &format!("/{i}"), "", &[], 8 * 1024), s.ledger().generation());
            s.cache.run_pending_tasks();
        }
        let (_, bytes) = s.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(s.evictions() > 0);
    }
}
