//! The store past the old format's 10 M-point limit: filled with fourteen days of synthetic
//! series through the store's API (no sampling in real time), flushed, and read back by a new
//! store with every series intact. Prints memory per series, bytes per sample and load time
//! (the README's figures: `cargo test --release -p flotilla-watch --test durable -- --nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use flotilla_watch::persist;
use flotilla_watch::store::{ms, Labels, Point, Store};

/// Counts live heap bytes, so the figures include every map, label and chunk the store holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const RETENTION: f64 = 14.0 * 86_400.0;
const RESOLUTION: f64 = 10.0;
/// 2026-09-21: a start on no block boundary.
const START: f64 = 1_790_000_123.0;
const POINTS: usize = (RETENTION / RESOLUTION) as usize;

/// What an edge's series look like, one kind per series.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A request counter with traffic (+~100 a sample).
    BusyCounter,
    /// A counter that never moves (5xx on a healthy group, most latency buckets).
    IdleCounter,
    /// A histogram bucket: moves now and then.
    SparseCounter,
    /// `target_up`, instance counts: constant.
    FlatGauge,
    /// Memory, queue depths: an integer that changes every sample.
    IntGauge,
    /// Per-interval quantiles: any float.
    FloatGauge,
}

const SHAPES: [Shape; 6] = [
    Shape::BusyCounter,
    Shape::IdleCounter,
    Shape::SparseCounter,
    Shape::FlatGauge,
    Shape::IntGauge,
    Shape::FloatGauge,
];

fn fill(store: &mut Store, name: &str, labels: &Labels, shape: Shape, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = 1000.0 * rng.f64().floor();
    // The sampler keeps whole-millisecond steps and re-ties to the wall clock now and then.
    let mut t = ms(START);
    for k in 0..POINTS {
        t += 10_000 + if k % 2000 == 1999 { rng.i64(-250..250) } else { 0 };
        let counter = match shape {
            Shape::BusyCounter => {
                v += 80.0 + rng.u32(0..40) as f64;
                true
            }
            Shape::IdleCounter => true,
            Shape::SparseCounter => {
                if rng.u8(0..10) == 0 {
                    v += rng.u32(1..4) as f64;
                }
                true
            }
            Shape::FlatGauge => {
                v = 1.0;
                false
            }
            Shape::IntGauge => {
                v = 50_000_000.0 + rng.u32(0..100_000) as f64;
                false
            }
            Shape::FloatGauge => {
                v = 0.05 + rng.f64() * 0.2;
                false
            }
        };
        let p = Point { t: t as f64 / 1000.0, v };
        if counter {
            store.push_counter(name, labels, p);
        } else {
            store.push(name, labels, p);
        }
    }
}

fn series(i: usize) -> (String, Labels, Shape) {
    let shape = SHAPES[i % SHAPES.len()];
    let labels =
        vec![("target_group".to_string(), format!("tg-{}", i / SHAPES.len())), ("shape".into(), format!("{shape:?}"))];
    (format!("flotilla_synthetic_{}", i % SHAPES.len()), labels, shape)
}

#[test]
fn a_store_past_ten_million_points_restarts_with_every_series_intact() {
    let dir = std::env::temp_dir().join(format!("flw-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n_series = 10_000_000 / POINTS + 6;
    let end = START + POINTS as f64 * RESOLUTION;

    // Bytes a sample, per shape (one series each).
    for shape in SHAPES {
        let mut s = Store::new(RETENTION, RESOLUTION);
        fill(&mut s, "x", &vec![], shape, 1);
        let st = s.stats();
        eprintln!("{shape:?}: {:.2} bytes/sample", st.chunk_bytes as f64 / st.points as f64);
    }

    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut store = Store::new(RETENTION, RESOLUTION);
    for i in 0..n_series {
        let (name, labels, shape) = series(i);
        fill(&mut store, &name, &labels, shape, i as u64);
    }
    let filled = started.elapsed();
    let live = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let st = store.stats();
    assert!(st.points > 10_000_000, "{st:?}");
    assert_eq!(st.series, n_series);
    eprintln!(
        "{} series, {} points in {filled:?}: {:.0} bytes/series ({:.2} bytes/sample, chunks alone {:.2})",
        st.series,
        st.points,
        live / st.series as f64,
        live / st.points as f64,
        st.chunk_bytes as f64 / st.points as f64
    );

    let store = Mutex::new(store);
    let (mut writer, _) = {
        let mut empty = Store::new(RETENTION, RESOLUTION);
        persist::load(&dir, &mut empty)
    };
    let t = Instant::now();
    assert!(writer.flush(&store));
    let disk: u64 =
        std::fs::read_dir(persist::segments_dir(&dir)).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    eprintln!(
        "flushed in {:?}: {disk} bytes on disk ({:.2} bytes/sample)",
        t.elapsed(),
        disk as f64 / st.points as f64
    );
    drop(writer);

    // The restart: a new store reads the data directory.
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut back = Store::new(RETENTION, RESOLUTION);
    back.advance(ms(end));
    let (_, loaded) = persist::load(&dir, &mut back);
    let took = t.elapsed();
    let live = (LIVE.load(Ordering::Relaxed) - before) as f64;
    eprintln!(
        "loaded {} points from {} segments in {took:?}; restored store {:.0} bytes/series ({:.2} bytes/sample)",
        loaded.points,
        loaded.segments,
        live / n_series as f64,
        live / loaded.points as f64
    );
    assert_eq!(loaded.damaged_files + loaded.damaged_chunks, 0);
    let orig = store.lock().unwrap();
    assert_eq!(back.stats().points, orig.stats().points);
    assert_eq!(back.series_count(), n_series);
    for i in 0..n_series {
        let (name, labels, _) = series(i);
        let a = orig.samples(&name, &labels);
        assert_eq!(a.len(), POINTS, "fourteen days at 10 s, to the sample");
        assert_eq!(a, back.samples(&name, &labels), "series {i}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
