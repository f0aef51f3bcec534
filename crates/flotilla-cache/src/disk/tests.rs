//! The disk tier's tests: the file format, the index, invalidation and its race with writes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;

use super::*;
use crate::freshness::{Freshness, Timing};
use crate::key::Encoding;
use crate::store::PathMatch;

/// A store with its own ledger, as the edge builds them.
fn open(d: &Path, budget: u64) -> (DiskStore, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    (DiskStore::open(d, budget, ledger.clone()).unwrap(), ledger)
}

/// Records `scope` (as the memory tier does) and applies it to the disk, sweep included.
fn invalidate(s: &DiskStore, ledger: &Ledger, scope: Scope) {
    let (at, ()) = ledger.record(scope.clone(), |_| ());
    s.sweep(s.invalidate(scope, at));
}

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
    let (s, l) = open(&d, 1 << 20);
    s.insert("k1", &[], &entry("/a", "", &["t1"], "hello"), l.generation());
    s.insert("k2", &[], &entry("/img/b", "", &["t2"], "world"), l.generation());
    drop(s);
    let (s, l) = open(&d, 1 << 20);
    assert_eq!(s.usage().0, 2);
    let (e, _) = s.lookup("k1", &HeaderMap::new()).unwrap();
    assert_eq!((e.body.as_ref(), e.path.as_str()), (&b"hello"[..], "/a"));
    assert!(e.freshness.must_revalidate && e.freshness.lifetime == Duration::from_secs(60));
    assert!(e.shared);
    assert_eq!(e.encoded[0].0, Encoding::Gzip);
    invalidate(&s, &l, Scope::Tags(vec!["t2".to_string()]));
    assert!(s.lookup("k2", &HeaderMap::new()).is_none());
    invalidate(&s, &l, Scope::Paths(vec![PathMatch::parse("/a")]));
    assert!(s.lookup("k1", &HeaderMap::new()).is_none());
    assert_eq!(fs::read_dir(d.join("objects")).unwrap().count(), 0);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_damaged_or_torn_file_is_never_served() {
    let d = dir("torn");
    let (s, l) = open(&d, 1 << 20);
    s.insert("k", &[], &entry("/a", "", &[], "the full body"), l.generation());
    let file = fs::read_dir(d.join("objects")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xFF;
    fs::write(&file, &bytes).unwrap();
    assert!(s.lookup("k", &HeaderMap::new()).is_none());
    assert_eq!(s.errors.load(Ordering::Relaxed), 1);
    // A torn file (cut short) and tmp leftovers are dropped at the next open.
    s.insert("k", &[], &entry("/a", "", &[], "the full body"), l.generation());
    let file = fs::read_dir(d.join("objects")).unwrap().next().unwrap().unwrap().path();
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    fs::write(d.join("tmp/leftover.obj"), b"partial").unwrap();
    drop(s);
    let (s, _) = open(&d, 1 << 20);
    assert_eq!(s.usage(), (0, 0));
    assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn evicts_least_recently_used_within_budget() {
    let d = dir("evict");
    let (s, l) = open(&d, 64 * 1024);
    let body = "x".repeat(10_000);
    for i in 0..5 {
        s.insert(&format!("k{i}"), &[], &entry(&format!("/{i}"), "", &[], &body), l.generation());
    }
    // Touch k0 so it is the most recently used.
    assert!(s.lookup("k0", &HeaderMap::new()).is_some());
    for i in 5..10 {
        s.insert(&format!("k{i}"), &[], &entry(&format!("/{i}"), "", &[], &body), l.generation());
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
    let (s, l) = open(&d, 1 << 20);
    let vary = vec![HeaderName::from_static("accept-language")];
    let req = |lang: &str| {
        let mut h = HeaderMap::new();
        h.insert("accept-language", lang.parse().unwrap());
        h
    };
    for lang in ["en", "fr"] {
        s.insert("k", &vary, &entry("/page", &key::secondary(&vary, &req(lang)), &[], lang), l.generation());
    }
    s.insert("other", &[], &entry("/page", "", &[], "kept"), l.generation());
    assert_eq!(s.usage().0, 3);
    assert_eq!(s.lookup("k", &req("fr")).unwrap().0.body.as_ref(), b"fr");
    invalidate(&s, &l, Scope::Key("k".into()));
    assert!(s.lookup("k", &req("en")).is_none() && s.lookup("k", &req("fr")).is_none());
    assert_eq!(s.usage().0, 1);
    assert_eq!(fs::read_dir(d.join("objects")).unwrap().count(), 1, "the variants' files are deleted");
    invalidate(&s, &l, Scope::Key("k".into()));
    assert!(s.lookup("other", &HeaderMap::new()).is_some());
    fs::remove_dir_all(&d).unwrap();
}

fn files(d: &Path) -> usize {
    fs::read_dir(d.join("objects")).unwrap().count()
}

/// The outside testers' race, step by step: the write of an object starts (its fill took the
/// generation), an invalidation covering it is applied, then the write finishes. It must not
/// land, whichever way the object was invalidated.
#[test]
fn a_write_that_started_before_an_invalidation_does_not_undo_it() {
    let d = dir("race");
    let (s, l) = open(&d, 1 << 20);
    let scopes = [
        Scope::Paths(vec![PathMatch::parse("/a*")]),
        Scope::Tags(vec!["t".into()]),
        Scope::Key("k".into()),
        Scope::All,
    ];
    for scope in scopes {
        assert!(s.insert("k", &[], &entry("/a", "", &["t"], "old"), l.generation()));
        let write_started = l.generation();
        invalidate(&s, &l, scope.clone());
        assert!(!s.insert("k", &[], &entry("/a", "", &["t"], "old"), write_started), "{scope:?}");
        assert!(s.lookup("k", &HeaderMap::new()).is_none(), "{scope:?}");
        assert_eq!(files(&d), 0, "{scope:?}: the refused file is deleted too");
        // A write that started afterwards is stored.
        assert!(s.insert("k", &[], &entry("/a", "", &["t"], "new"), l.generation()));
        assert_eq!(s.lookup("k", &HeaderMap::new()).unwrap().0.body.as_ref(), b"new");
        invalidate(&s, &l, Scope::All);
    }
    // Past the ledger's capacity a write cannot prove nothing matched it: dropped.
    let s = DiskStore::open(&d, 1 << 20, Arc::new(Ledger::new(2))).unwrap();
    let started = s.ledger.generation();
    for i in 0..3 {
        s.ledger.record(Scope::Key(format!("other{i}")), |_| ());
    }
    assert!(!s.insert("k", &[], &entry("/a", "", &[], "old"), started));
    fs::remove_dir_all(&d).unwrap();
}

/// An invalidation is in effect for lookups when `invalidate` returns; the sweep (off the
/// runtime, later) removes the entries from the index and deletes their files.
#[test]
fn an_invalidation_hides_at_once_and_the_sweep_cleans_up() {
    let d = dir("hide");
    let (s, l) = open(&d, 1 << 20);
    s.insert("k1", &[], &entry("/img/1", "", &[], "a"), l.generation());
    s.insert("k2", &[], &entry("/page", "", &[], "b"), l.generation());
    let scope = Scope::Paths(vec![PathMatch::parse("/img/*")]);
    let (at, ()) = l.record(scope.clone(), |_| ());
    let sweep = s.invalidate(scope, at);
    assert!(s.lookup("k1", &HeaderMap::new()).is_none(), "hidden before any sweep");
    assert!(s.lookup("k2", &HeaderMap::new()).is_some());
    assert_eq!((s.usage().0, files(&d)), (2, 2), "nothing removed yet");
    // Stored after the invalidation: not hidden by it.
    s.insert("k3", &[], &entry("/img/3", "", &[], "c"), l.generation());
    assert!(s.lookup("k3", &HeaderMap::new()).is_some());
    s.sweep(sweep);
    assert_eq!((s.usage().0, files(&d)), (2, 2), "k1 gone, k2 and k3 kept");
    assert!(s.index().pending.is_empty());
    fs::remove_dir_all(&d).unwrap();
}

fn meta(i: usize, path: &str, generation: u64) -> Meta {
    Meta {
        file: format!("missing-{i}.obj"),
        primary: format!("k{i}"),
        secondary: String::new(),
        vary: vec![],
        host: "h".into(),
        path: path.into(),
        tags: vec![],
        size: 100,
        last_access: i as u64,
        generation,
    }
}

/// Sweeps and evictions walk a large index in chunks: every entry across the chunk boundaries
/// is handled, and nothing else.
#[test]
fn sweeps_and_evictions_cover_every_chunk() {
    let d = dir("chunks");
    let n = 2 * CHUNK + 17;
    let (s, l) = open(&d, u64::MAX / 2);
    {
        let mut idx = s.index();
        for i in 0..n {
            idx.add(meta(i, if i % 3 == 0 { "/drop" } else { "/keep" }, 0));
        }
    }
    invalidate(&s, &l, Scope::Paths(vec![PathMatch::parse("/drop")]));
    assert_eq!(s.usage().0 as usize, n - n.div_ceil(3));
    // Evict down to 90% of a budget a tenth below the bytes held: the oldest go first.
    let (s, _) = open(&dir("chunks-evict"), (n as u64 * 100) * 9 / 10);
    {
        let mut idx = s.index();
        for i in 0..n {
            idx.add(meta(i, "/p", 0));
            idx.tick = n as u64;
        }
    }
    s.evict();
    let (left, bytes) = s.usage();
    assert!(bytes <= (n as u64 * 100) * 81 / 100, "{bytes}");
    let idx = s.index();
    let oldest_left = (0..idx.slot_count()).filter_map(|i| idx.slot(i)).map(|m| m.last_access).min().unwrap();
    assert_eq!(oldest_left, n as u64 - left, "least recently used first");
    fs::remove_dir_all(&d).unwrap();
}

/// More invalidations waiting for their sweeps than lookups should check: the disk tier is
/// emptied instead (over-removing is safe).
#[test]
fn too_many_pending_invalidations_empty_the_disk() {
    let d = dir("pending");
    let (s, l) = open(&d, 1 << 20);
    s.insert("k", &[], &entry("/keep", "", &[], "a"), l.generation());
    let mut sweeps = Vec::new();
    for i in 0..MAX_PENDING {
        let scope = Scope::Tags(vec![format!("t{i}")]);
        let (at, ()) = l.record(scope.clone(), |_| ());
        sweeps.push(s.invalidate(scope, at));
    }
    assert!(s.lookup("k", &HeaderMap::new()).is_some());
    let scope = Scope::Tags(vec!["one more".into()]);
    let (at, ()) = l.record(scope.clone(), |_| ());
    sweeps.push(s.invalidate(scope, at));
    assert!(s.lookup("k", &HeaderMap::new()).is_none());
    for sweep in sweeps {
        s.sweep(sweep);
    }
    assert_eq!((s.usage().0, files(&d)), (0, 0));
    fs::remove_dir_all(&d).unwrap();
}
