use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::store::Point;

const T0: f64 = 1_790_000_000.0;
const DAY: f64 = 86_400.0;

fn scratch(name: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("flw-{name}-{}-{nanos}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn labels(i: usize) -> Labels {
    vec![("i".into(), i.to_string())]
}

/// Two gauges and two counters sampled every 10 s from `from` for `n` samples.
fn fill(store: &Mutex<Store>, from: f64, n: usize, mut flush_every: impl FnMut(usize)) {
    for k in 0..n {
        let t = from + k as f64 * 10.0;
        {
            let mut s = store.lock().unwrap();
            s.advance(crate::store::ms(t));
            for i in 0..2 {
                s.push("g", &labels(i), Point { t, v: (k % 17) as f64 * 0.5 + i as f64 });
                s.push_counter("c_rate", &labels(i), Point { t, v: (k * 30 + i) as f64 });
            }
        }
        flush_every(k);
    }
}

fn all(store: &Store) -> BTreeMap<(String, Labels), Vec<Point>> {
    let mut out = BTreeMap::new();
    for (name, sets) in store.names() {
        for l in sets {
            out.insert((name.clone(), l.clone()), store.samples(&name, &l));
        }
    }
    out
}

fn reload(dir: &Path, retention: f64, now: f64) -> (Store, Writer, Loaded) {
    let mut s = Store::new(retention, 10.0);
    s.advance(crate::store::ms(now));
    let (w, loaded) = load(dir, &mut s);
    (s, w, loaded)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(segments_dir(dir)).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn flushes_append_and_a_restart_reads_every_point() {
    let dir = scratch("append");
    let store = Mutex::new(Store::new(DAY, 10.0));
    store.lock().unwrap().advance(crate::store::ms(T0));
    let (mut w, _) = load(&dir, &mut Store::new(DAY, 10.0));
    let mut first: Option<(PathBuf, Vec<u8>)> = None;
    // Five hours (three 2 h blocks), flushed every minute.
    fill(&store, T0, 1800, |k| {
        if k % 6 == 5 {
            assert!(w.flush(&store));
            let f = files(&dir)[0].clone();
            let now = fs::read(&f).unwrap();
            // Appended, never rewritten: what was there stays byte for byte.
            if let Some((p, before)) = &first {
                if *p == f {
                    assert!(now.starts_with(before), "segment rewritten");
                }
            }
            first = Some((f, now));
        }
    });
    assert!(w.flush(&store));
    assert_eq!(files(&dir).len(), 3, "one segment per block: {:?}", files(&dir));
    let expected = all(&store.lock().unwrap());
    assert_eq!(expected.len(), 4);
    assert!(expected.values().all(|p| p.len() == 1800));
    let (back, _, loaded) = reload(&dir, DAY, T0 + 1800.0 * 10.0);
    assert_eq!(loaded.points, 4 * 1800);
    assert_eq!(all(&back), expected);
    // Rates read the same too (a restored chunk knows the reading before it).
    let q = |s: &Store| s.query("c_rate", &BTreeMap::new(), 0.0, 1e12);
    assert_eq!(q(&back), q(&store.lock().unwrap()));
    assert_eq!(q(&back).len(), 1799);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn after_a_restart_counters_start_over_and_new_points_follow() {
    let dir = scratch("restart");
    let store = Mutex::new(Store::new(DAY, 10.0));
    let (mut w, _) = load(&dir, &mut store.lock().unwrap());
    fill(&store, T0, 30, |_| {});
    assert!(w.flush(&store));
    let (back, mut w, _) = reload(&dir, DAY, T0 + 300.0);
    let back = Mutex::new(back);
    // The process restarted: its counter starts from 0 again. No rate spans the restart.
    {
        let mut s = back.lock().unwrap();
        s.push_counter("c_rate", &labels(0), Point { t: T0 + 400.0, v: 5.0 });
        s.push_counter("c_rate", &labels(0), Point { t: T0 + 410.0, v: 25.0 });
    }
    let rates = back.lock().unwrap().query("c_rate", &[("i".to_string(), "0".to_string())].into(), T0 + 290.0, 1e12);
    assert_eq!(rates, vec![Point { t: T0 + 290.0, v: 3.0 }, Point { t: T0 + 410.0, v: 2.0 }]);
    assert!(w.flush(&back));
    let (again, _, _) = reload(&dir, DAY, T0 + 410.0);
    assert_eq!(all(&again), all(&back.lock().unwrap()));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_torn_tail_loses_only_the_last_flush() {
    let dir = scratch("torn");
    let store = Mutex::new(Store::new(DAY, 10.0));
    let (mut w, _) = load(&dir, &mut store.lock().unwrap());
    fill(&store, T0, 60, |_| {});
    assert!(w.flush(&store));
    let expected = all(&store.lock().unwrap());
    fill(&store, T0 + 600.0, 6, |_| {});
    assert!(w.flush(&store));
    // A crash mid-write: the last record is cut short.
    let f = files(&dir).pop().unwrap();
    let len = fs::metadata(&f).unwrap().len();
    fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 3).unwrap();
    let (back, _, loaded) = reload(&dir, DAY, T0 + 700.0);
    assert_eq!(all(&back), expected);
    assert_eq!(loaded.damaged_files, 0, "a torn tail is the expected end of a crash");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_damaged_segment_loses_only_itself() {
    let dir = scratch("damaged");
    let store = Mutex::new(Store::new(DAY, 10.0));
    let (mut w, _) = load(&dir, &mut store.lock().unwrap());
    // Three blocks, a flush a minute.
    fill(&store, T0, 1800, |k| {
        if k % 6 == 5 {
            w.flush(&store);
        }
    });
    assert!(w.flush(&store));
    let expected = all(&store.lock().unwrap());
    let segs = files(&dir);
    // Bit rot in the middle of the first segment; the second one's header unreadable.
    let mut a = fs::read(&segs[0]).unwrap();
    let mid = a.len() / 2;
    a[mid] ^= 0x5a;
    fs::write(&segs[0], &a).unwrap();
    let mut b = fs::read(&segs[1]).unwrap();
    b[3] ^= 1;
    fs::write(&segs[1], &b).unwrap();
    let (back, _, loaded) = reload(&dir, DAY, T0 + 18_000.0);
    assert_eq!(loaded.damaged_files, 2);
    assert!(segs[1].with_extension("seg.damaged").exists(), "an unreadable file is set aside");
    let block = back.block_ms() as f64 / 1000.0;
    let third = ((T0 / block).floor() + 2.0) * block;
    let got = all(&back);
    for (key, points) in &expected {
        let kept = &got[key];
        // The third block is whole; of the first, a prefix survives; the second is gone.
        let tail: Vec<_> = points.iter().filter(|p| p.t >= third).copied().collect();
        assert!(kept.ends_with(&tail), "{key:?}");
        let head: Vec<_> = kept.iter().filter(|p| p.t < third).copied().collect();
        assert!(!head.is_empty() && points.starts_with(&head), "{key:?}");
        assert!(head.len() < points.len() - tail.len());
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn segments_past_the_retention_are_deleted_and_the_window_is_exact() {
    let dir = scratch("retention");
    let hour = 3600.0;
    let store = Mutex::new(Store::new(hour, 10.0));
    let (mut w, _) = load(&dir, &mut store.lock().unwrap());
    // Three hours of 7.5-minute blocks, a flush a minute.
    fill(&store, T0, 1080, |k| {
        if k % 6 == 5 {
            assert!(w.flush(&store));
        }
    });
    let end = T0 + 1079.0 * 10.0;
    let n = files(&dir).len();
    assert!((8..=10).contains(&n), "{n} files for one hour of 7.5-minute blocks");
    // To the millisecond: nothing at or before end − retention, everything after it.
    let window = |s: &Store| s.samples("g", &labels(0));
    let live = window(&store.lock().unwrap());
    assert_eq!(live.first().map(|p| p.t), Some(end - hour + 10.0));
    assert_eq!(live.len(), 360);
    let q = store.lock().unwrap().query("g", &BTreeMap::new(), 0.0, 1e12);
    assert_eq!(q.first().map(|p| p.t), Some(end - hour + 10.0));
    // A restart a minute later reads only the window and deletes what fell out of it.
    let (back, _, loaded) = reload(&dir, hour, end + 60.0);
    assert!(loaded.segments <= 10 && loaded.expired_files <= 1, "{loaded:?}");
    assert_eq!(window(&back).first().map(|p| p.t), Some(end + 60.0 - hour + 10.0));
    assert_eq!(window(&back).last().map(|p| p.t), Some(end));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_failed_write_sends_its_chunks_again() {
    let dir = scratch("failed");
    let store = Mutex::new(Store::new(DAY, 10.0));
    let (mut w, _) = load(&dir, &mut store.lock().unwrap());
    fill(&store, T0, 12, |_| {});
    assert!(w.flush(&store));
    // The disk refuses the next write (a read-only handle stands in for a full disk).
    let open = w.open.values_mut().next().unwrap();
    open.file = File::open(&open.path).unwrap();
    fill(&store, T0 + 120.0, 12, |_| {});
    assert!(!w.flush(&store));
    fill(&store, T0 + 240.0, 12, |_| {});
    assert!(w.flush(&store));
    assert_eq!(files(&dir).len(), 2, "a new file took the chunks");
    let (back, _, _) = reload(&dir, DAY, T0 + 400.0);
    assert_eq!(all(&back), all(&store.lock().unwrap()));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn the_old_single_file_is_migrated_to_segments() {
    let dir = scratch("legacy");
    let old: Vec<legacy::OldSeries> = (0..3)
        .map(|i| {
            (
                "flotilla_http_requests_rate".to_string(),
                labels(i),
                (0..500).map(|k| (T0 + k as f64 * 10.0, k as f64 / 7.0)).collect(),
            )
        })
        .collect();
    legacy::write(&dir, &old).unwrap();
    let mut s = Store::new(DAY, 10.0);
    s.advance(crate::store::ms(T0 + 5000.0));
    let (mut w, loaded) = load(&dir, &mut s);
    assert_eq!(loaded.legacy_points, 1500);
    let store = Mutex::new(s);
    finish_migration(&dir, &mut w, &store);
    assert!(!legacy::file(&dir).exists());
    // The old values were rates already: read as they were written.
    let q = store.lock().unwrap().query("http_requests_rate", &[("i".to_string(), "1".to_string())].into(), 0.0, 1e12);
    assert_eq!(q.len(), 500);
    assert_eq!(q[7], Point { t: T0 + 70.0, v: 1.0 });
    let (back, _, _) = reload(&dir, DAY, T0 + 5000.0);
    assert_eq!(all(&back), all(&store.lock().unwrap()));
    let _ = fs::remove_dir_all(dir);
}
