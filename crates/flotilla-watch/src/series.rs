//! One series: its points in compressed chunks, oldest first, and what persistence has written
//! of them. A counter keeps its raw readings (as Prometheus does) and is read back as per-second
//! rates, so its values compress like the integers they are; every other series keeps its values.

use std::collections::VecDeque;

use crate::chunk::Chunk;

/// A chunk with what the store and persistence need beside its points.
#[derive(Debug)]
pub(crate) struct Stored {
    pub chunk: Chunk,
    /// Names the chunk in segment files (unique in this process).
    pub uid: u64,
    /// The values are a counter's raw readings: reading gives the rate between two of them.
    pub counter: bool,
    /// The point just before this chunk's first (the previous chunk's last), so the first rate
    /// of the chunk needs no other chunk. None after a restart: counters start over then.
    pub prev: Option<(i64, f64)>,
    /// Takes no more points.
    pub sealed: bool,
    /// Bits already written to the data directory.
    pub flushed: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Series {
    pub chunks: VecDeque<Stored>,
    /// A point was recorded by this process: a new chunk continues the counter from the last.
    chained: bool,
    points: u64,
}

/// Where a new point goes: closes the head chunk at a block boundary (persistence writes one
/// segment per block) or when it is full.
pub(crate) struct Layout {
    pub block_ms: i64,
    pub chunk_points: u32,
    pub max_points: u64,
}

impl Series {
    /// Appends a point later than the last one; false (nothing recorded) otherwise.
    pub fn push(&mut self, t: i64, v: f64, counter: bool, layout: &Layout, uid: &mut u64) -> bool {
        let mut prev = None;
        if let Some(last) = self.chunks.back_mut() {
            if t <= last.chunk.last_t() {
                return false;
            }
            let full = last.sealed
                || last.counter != counter
                || last.chunk.count() >= layout.chunk_points
                || last.chunk.first_t().div_euclid(layout.block_ms) != t.div_euclid(layout.block_ms);
            if full {
                if !last.sealed {
                    last.sealed = true;
                    last.chunk.seal();
                }
                if self.chained && counter && last.counter {
                    prev = Some((last.chunk.last_t(), last.chunk.last_v()));
                }
            }
        }
        if self.chunks.back().is_none_or(|c| c.sealed) {
            self.grow();
            *uid += 1;
            self.chunks.push_back(Stored { chunk: Chunk::new(), uid: *uid, counter, prev, sealed: false, flushed: 0 });
        }
        if let Some(head) = self.chunks.back_mut() {
            head.chunk.push(t, v);
        }
        self.chained = true;
        self.points += 1;
        while self.points > layout.max_points && self.chunks.len() > 1 {
            self.drop_oldest();
        }
        true
    }

    /// Adds a chunk read back from disk; it must start after the last point held.
    pub fn restore(&mut self, stored: Stored) -> bool {
        if self.chunks.back().is_some_and(|c| c.chunk.last_t() >= stored.chunk.first_t()) {
            return false;
        }
        self.points += u64::from(stored.chunk.count());
        self.grow();
        self.chunks.push_back(stored);
        true
    }

    /// Room for one more chunk. Chunks come one a block at most: grow by an eighth, not double.
    fn grow(&mut self) {
        if self.chunks.len() == self.chunks.capacity() {
            self.chunks.reserve_exact((self.chunks.len() / 8).max(2));
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(c) = self.chunks.pop_front() {
            self.points -= u64::from(c.chunk.count());
        }
    }

    /// Forgets chunks whose every point is at or before `horizon`; true when nothing is left.
    pub fn prune(&mut self, horizon: i64) -> bool {
        while self.chunks.front().is_some_and(|c| c.chunk.last_t() <= horizon) {
            self.drop_oldest();
        }
        self.chunks.is_empty()
    }

    /// Seals the head chunk (a block ended).
    pub fn seal(&mut self) {
        if let Some(c) = self.chunks.back_mut().filter(|c| !c.sealed) {
            c.sealed = true;
            c.chunk.seal();
        }
    }

    pub fn last_t(&self) -> Option<i64> {
        self.chunks.back().map(|c| c.chunk.last_t())
    }

    pub fn points(&self) -> u64 {
        self.points
    }

    /// Calls `f` with every point (rates for counter chunks) with `from <= t <= to`, in order.
    pub fn visit(&self, from: i64, to: i64, mut f: impl FnMut(i64, f64)) {
        let start = self.chunks.partition_point(|c| c.chunk.last_t() < from);
        for c in self.chunks.range(start..) {
            if c.chunk.first_t() > to {
                break;
            }
            if !c.counter {
                for (t, v) in c.chunk.points() {
                    if t > to {
                        break;
                    }
                    if t >= from {
                        f(t, v);
                    }
                }
                continue;
            }
            let mut prev = c.prev;
            for (t, v) in c.chunk.points() {
                if t > to {
                    break;
                }
                if let (true, Some((pt, pv))) = (t >= from, prev) {
                    // A counter that went down was reset: count from zero.
                    let delta = if v >= pv { v - pv } else { v };
                    f(t, delta / ((t - pt) as f64 / 1000.0));
                }
                prev = Some((t, v));
            }
        }
    }

    /// Heap bytes of the chunks (points and their bookkeeping).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Stored>()
            + self.chunks.iter().map(|c| c.chunk.heap_bytes()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout { block_ms: 1_000_000, chunk_points: 50, max_points: 1000 };

    #[test]
    fn counters_read_as_rates_across_chunks_and_resets() {
        let mut s = Series::default();
        let mut uid = 0;
        for i in 0..120i64 {
            // +20 every 10 s, reset to 5 at i = 70.
            let v = if i < 70 { i as f64 * 20.0 } else { 5.0 + (i - 70) as f64 * 20.0 };
            assert!(s.push(i * 10_000, v, true, &LAYOUT, &mut uid));
        }
        assert!(s.chunks.len() >= 3, "blocks and the size limit split chunks");
        let mut got = vec![];
        s.visit(0, i64::MAX, |t, v| got.push((t, v)));
        assert_eq!(got.len(), 119, "the first reading has no rate");
        assert!(got.iter().all(|&(t, v)| if t == 700_000 { v == 0.5 } else { v == 2.0 }), "{got:?}");
        // A window starting mid-series still has the rate of its first point.
        let mut got = vec![];
        s.visit(500_000, 520_000, |t, v| got.push((t, v)));
        assert_eq!(got, vec![(500_000, 2.0), (510_000, 2.0), (520_000, 2.0)]);
        // The oldest chunk pruned: the first chunk left still knows its predecessor.
        assert!(!s.prune(600_000));
        let mut got = vec![];
        s.visit(0, 650_000, |t, v| got.push((t, v)));
        assert_eq!(got.first(), Some(&(500_000, 2.0)));
    }

    #[test]
    fn out_of_order_points_are_refused_and_memory_is_capped() {
        let mut s = Series::default();
        let mut uid = 0;
        assert!(s.push(10, 1.0, false, &LAYOUT, &mut uid));
        assert!(!s.push(10, 2.0, false, &LAYOUT, &mut uid));
        assert!(!s.push(5, 2.0, false, &LAYOUT, &mut uid));
        let layout = Layout { max_points: 100, ..LAYOUT };
        for i in 0..1000 {
            s.push(20 + i, 1.0, false, &layout, &mut uid);
        }
        assert!(s.points() <= 100 && s.points() > 50, "{}", s.points());
    }
}
