//! The in-process time-series store: one datapoint per series per sample, kept for exactly the
//! retention. Counters are kept as their raw readings and read as per-second rates
//! (`x_total` → `x_rate`), gauges as they are, histograms as cumulative bucket counts read as
//! rates (`x_bucket_rate`, `x_count_rate`) plus the quantiles of the observations between two
//! samples (`x_p50`, `x_p95`, `x_p99`), so a period with no traffic has no latency datapoint —
//! missing data, as CloudWatch would see it.
//!
//! Points live in Gorilla-compressed chunks (`chunk.rs`), times in milliseconds. A chunk ends
//! at each block boundary (a span of the retention, at most two hours), which is what
//! persistence writes one segment file per.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::chunk::Chunk;
use crate::expo::{Kind, Sample};
use crate::series::{Layout, Series, Stored};

/// Series beyond this are dropped (with a log line), so label explosions cannot eat memory.
pub const MAX_SERIES: usize = 20_000;
/// Points per chunk at most (a chunk also ends with its block).
pub const CHUNK_POINTS: u32 = 1024;
/// Longest block (and so chunk) span; shorter retentions get an eighth of theirs, at least a
/// minute.
pub const MAX_BLOCK_MS: i64 = 2 * 3600 * 1000;

pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub v: f64,
}

/// An alias: its name, the real series name, and labels it adds to the filter.
type Alias = (&'static str, &'static str, &'static [(&'static str, &'static str)]);
/// Cumulative bucket counts (upper bound, count) of one histogram at one scrape.
type Buckets = Vec<(f64, f64)>;

/// Friendly names for the edge's metrics, as alarms and dashboards use them.
const ALIASES: &[Alias] = &[
    ("http_requests_rate", "flotilla_http_requests_rate", &[]),
    ("http_requests_2xx_rate", "flotilla_http_requests_rate", &[("class", "2xx")]),
    ("http_requests_3xx_rate", "flotilla_http_requests_rate", &[("class", "3xx")]),
    ("http_requests_4xx_rate", "flotilla_http_requests_rate", &[("class", "4xx")]),
    ("http_requests_5xx_rate", "flotilla_http_requests_rate", &[("class", "5xx")]),
    // The targets' own answers only (ALB's HTTPCode_Target_*): the names above count what
    // clients saw, the edge's 502/503/504 and cache hits included (`source` label).
    ("target_http_requests_rate", "flotilla_http_requests_rate", &[("source", "target")]),
    ("target_http_requests_2xx_rate", "flotilla_http_requests_rate", &[("class", "2xx"), ("source", "target")]),
    ("target_http_requests_4xx_rate", "flotilla_http_requests_rate", &[("class", "4xx"), ("source", "target")]),
    ("target_http_requests_5xx_rate", "flotilla_http_requests_rate", &[("class", "5xx"), ("source", "target")]),
    ("edge_http_requests_5xx_rate", "flotilla_http_requests_rate", &[("class", "5xx"), ("source", "edge")]),
    // From the edge's fine (~3 %) buckets rather than the classic ones.
    ("http_latency_p50", "flotilla_http_request_latency_fine_seconds_p50", &[]),
    ("http_latency_p95", "flotilla_http_request_latency_fine_seconds_p95", &[]),
    ("http_latency_p99", "flotilla_http_request_latency_fine_seconds_p99", &[]),
    // The same over every node of a cluster (what cluster-scoped alarms read; `alarm::series_of`).
    ("cluster_http_requests_rate", "flotilla_cluster_http_requests_rate", &[]),
    ("cluster_http_requests_2xx_rate", "flotilla_cluster_http_requests_rate", &[("class", "2xx")]),
    ("cluster_http_requests_3xx_rate", "flotilla_cluster_http_requests_rate", &[("class", "3xx")]),
    ("cluster_http_requests_4xx_rate", "flotilla_cluster_http_requests_rate", &[("class", "4xx")]),
    ("cluster_http_requests_5xx_rate", "flotilla_cluster_http_requests_rate", &[("class", "5xx")]),
    ("cluster_http_latency_p50", "flotilla_cluster_http_request_duration_seconds_p50", &[]),
    ("cluster_http_latency_p95", "flotilla_cluster_http_request_duration_seconds_p95", &[]),
    ("cluster_http_latency_p99", "flotilla_cluster_http_request_duration_seconds_p99", &[]),
];

/// What persistence must write of one chunk: bits `from_bit..to_bit` and, the first time a
/// segment sees it, its series and chunk.
pub struct Outgoing {
    pub name: String,
    pub labels: Labels,
    pub uid: u64,
    pub counter: bool,
    pub prev: Option<(i64, f64)>,
    /// The block (`first_t / block_ms`) the chunk belongs to.
    pub block: i64,
    pub from_bit: u32,
    pub to_bit: u32,
    /// Bytes holding those bits (the first may start with bits written before).
    pub bytes: Vec<u8>,
}

/// How much the store holds (logged, and the README's memory figures).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub series: usize,
    pub points: u64,
    /// Heap bytes of chunks (points and their bookkeeping), not counting names and labels.
    pub chunk_bytes: usize,
    /// Compressed bits of every point (the codec alone).
    pub bits: u64,
}

pub struct Store {
    retention_ms: i64,
    layout: Layout,
    /// The latest sample time: the retention window ends here.
    now_ms: i64,
    series: HashMap<String, BTreeMap<Labels, Series>>,
    count: usize,
    /// Previous histogram buckets (for the quantiles of each interval).
    last_buckets: HashMap<(String, Labels), (f64, Buckets)>,
    dropped_logged: bool,
    out_of_order_logged: bool,
    /// Last chunk id given out.
    uid: u64,
    /// Chunks before a flushed one may still need writing (restored from the old format, or
    /// to send again after a failed write): the next `outgoing` looks at every chunk.
    rescan: bool,
}

/// Seconds → milliseconds (what chunks store).
pub fn ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Store {
    pub fn new(retention_secs: f64, resolution_secs: f64) -> Self {
        let retention_ms = ms(retention_secs).max(1);
        let resolution_ms = ms(resolution_secs).max(1);
        let block_ms = (retention_ms / 8).clamp(60_000, MAX_BLOCK_MS);
        // Points arrive one per resolution at most; a chunk's worth more covers the one being
        // filled at the retention's far end.
        let max_points = (retention_ms / resolution_ms + 1) as u64 + u64::from(CHUNK_POINTS);
        Self {
            retention_ms,
            layout: Layout { block_ms, chunk_points: CHUNK_POINTS, max_points },
            now_ms: i64::MIN,
            series: HashMap::new(),
            count: 0,
            last_buckets: HashMap::new(),
            dropped_logged: false,
            out_of_order_logged: false,
            uid: 0,
            rescan: false,
        }
    }

    pub fn block_ms(&self) -> i64 {
        self.layout.block_ms
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// The latest time seen (epoch milliseconds): samples, or the start of this process.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Moves the window's end to `t` (ms). A new block seals every chunk of the old one, so
    /// its segment is complete once flushed.
    pub fn advance(&mut self, t: i64) {
        if t <= self.now_ms {
            return;
        }
        let old = self.now_ms;
        self.now_ms = t;
        if old != i64::MIN && old.div_euclid(self.layout.block_ms) != t.div_euclid(self.layout.block_ms) {
            for family in self.series.values_mut() {
                family.values_mut().for_each(Series::seal);
            }
        }
    }

    /// Forgets what has had no sample for a whole retention window: series of targets and
    /// instances that are gone (a fleet replaces them on new ports for as long as it runs),
    /// and the bucket baselines kept for them; and in other series, chunks wholly outside it.
    fn prune(&mut self) {
        let horizon = self.now_ms - self.retention_ms;
        let mut removed = 0;
        for family in self.series.values_mut() {
            family.retain(|_, s| {
                let gone = s.prune(horizon);
                removed += usize::from(gone);
                !gone
            });
        }
        self.series.retain(|_, f| !f.is_empty());
        self.count -= removed;
        let horizon = secs(horizon);
        self.last_buckets.retain(|_, (pt, _)| *pt >= horizon);
    }

    /// At the series cap, makes room by dropping the series silent the longest (a hundredth of
    /// the cap at once), so new targets keep being recorded however long the process runs.
    fn evict_stalest(&mut self) {
        let mut last: Vec<(i64, String, Labels)> = self
            .series
            .iter()
            .flat_map(|(name, f)| f.iter().map(move |(l, s)| (s.last_t().unwrap_or(i64::MIN), name.clone(), l.clone())))
            .collect();
        let n = (MAX_SERIES / 100).max(1).min(last.len());
        last.select_nth_unstable_by(n.saturating_sub(1), |a, b| a.0.cmp(&b.0));
        for (_, name, labels) in last.into_iter().take(n) {
            if let Some(f) = self.series.get_mut(&name) {
                if f.remove(&labels).is_some() {
                    self.count -= 1;
                }
            }
        }
        self.series.retain(|_, f| !f.is_empty());
    }

    /// Records one scrape taken at `t`.
    pub fn ingest(&mut self, t: f64, samples: &[Sample], kinds: &HashMap<String, Kind>) {
        let t_ms = ms(t);
        self.advance(t_ms);
        self.prune();
        let mut buckets: HashMap<(String, Labels), Buckets> = HashMap::new();
        for s in samples {
            let family = family_of(&s.name, kinds);
            match family {
                Some((f, Kind::Counter)) if s.name.ends_with("_total") => {
                    self.record(&format!("{f}_rate"), &s.labels, t_ms, s.value, true);
                }
                Some((f, Kind::Histogram)) if s.name.ends_with("_bucket") => {
                    let mut labels = s.labels.clone();
                    let Some(pos) = labels.iter().position(|(k, _)| k == "le") else { continue };
                    let le = labels.remove(pos).1;
                    let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                    buckets.entry((f.to_string(), labels)).or_default().push((bound, s.value));
                }
                Some((_, Kind::Histogram)) | Some((_, Kind::Counter)) => {}
                _ => self.record(&s.name, &s.labels, t_ms, s.value, false),
            }
        }
        for ((family, labels), mut now) in buckets {
            now.sort_by(|a, b| a.0.total_cmp(&b.0));
            let key = (family.clone(), labels.clone());
            let before = self.last_buckets.insert(key, (t, now.clone()));
            // Cumulative counts, read as rates: all requests, and per bucket (requests at most
            // `le` seconds) for SLOs.
            if let Some((_, total)) = now.last() {
                self.record(&format!("{family}_count_rate"), &labels, t_ms, *total, true);
            }
            for (le, c) in now.iter().filter(|(le, _)| le.is_finite()) {
                let mut with_le = labels.clone();
                with_le.push(("le".into(), le.to_string()));
                with_le.sort();
                let name = format!("{family}_bucket_rate");
                // A bound the previous scrape did not list (sparse histograms list only buckets
                // in use) had the cumulative count of the largest bound below it then.
                if let Some((pt, b)) = before.as_ref().filter(|(pt, _)| *pt < t) {
                    if !self.series.get(&name).is_some_and(|f| f.contains_key(&with_le)) {
                        self.record(&name, &with_le, ms(*pt), prev_cumulative(b, *le), true);
                    }
                }
                self.record(&name, &with_le, t_ms, *c, true);
            }
            let Some((pt, before)) = before else { continue };
            if t <= pt {
                continue;
            }
            // Observations in this interval per bucket (cumulative counts, reset-safe).
            let delta: Vec<(f64, f64)> = now
                .iter()
                .map(|(le, c)| {
                    let prev = prev_cumulative(&before, *le);
                    (*le, if *c >= prev { c - prev } else { *c })
                })
                .collect();
            let total = delta.last().map_or(0.0, |d| d.1);
            if total <= 0.0 {
                continue;
            }
            for (q, suffix) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
                let v = quantile(&delta, q);
                self.record(&format!("{family}_{suffix}"), &labels, t_ms, v, false);
            }
        }
    }

    /// Records a gauge's point (tests, and the synthetic history of the durability test).
    pub fn push(&mut self, name: &str, labels: &Labels, p: Point) {
        let t = ms(p.t);
        self.advance(t);
        self.record(name, labels, t, p.v, false);
    }

    /// Records a counter's raw reading at `p.t` (read back as rates).
    pub fn push_counter(&mut self, name: &str, labels: &Labels, p: Point) {
        let t = ms(p.t);
        self.advance(t);
        self.record(name, labels, t, p.v, true);
    }

    fn record(&mut self, name: &str, labels: &Labels, t: i64, v: f64, counter: bool) {
        // Epoch milliseconds from 1970 to the year 287,000: what a clock can say.
        if !v.is_finite() || !(0..1 << 53).contains(&t) {
            return;
        }
        self.make_room(name, labels);
        let Some(s) = self.series.get_mut(name).and_then(|f| f.get_mut(labels)) else { return };
        let accepted = s.push(t, v, counter, &self.layout, &mut self.uid);
        if !accepted && !self.out_of_order_logged {
            self.out_of_order_logged = true;
            tracing::warn!(metric = name, "a sample is not later than the last one (the clock went back?); dropped");
        }
    }

    /// Creates the series if it is new, making room at the cap.
    fn make_room(&mut self, name: &str, labels: &Labels) {
        if self.series.get(name).is_some_and(|f| f.contains_key(labels)) {
            return;
        }
        if self.count >= MAX_SERIES {
            if !self.dropped_logged {
                self.dropped_logged = true;
                tracing::warn!(limit = MAX_SERIES, metric = name, "too many series; dropping the longest silent ones");
            }
            self.evict_stalest();
        }
        self.count += 1;
        self.series.entry(name.to_string()).or_default().insert(labels.clone(), Series::default());
    }

    /// Points of every series of `name` whose labels include `filter`, combined per timestamp:
    /// summed (rates, gauges) or, for quantiles, the largest. Aliases resolve first. Nothing
    /// older than the retention window is returned, whatever the chunks still hold.
    pub fn query(&self, name: &str, filter: &BTreeMap<String, String>, from: f64, to: f64) -> Vec<Point> {
        let (real, extra) = resolve(name);
        let mut filter = filter.clone();
        for (k, v) in extra {
            filter.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
        let Some(family) = self.series.get(real) else { return vec![] };
        let quantile = ["_p50", "_p95", "_p99"].iter().any(|s| real.ends_with(s));
        let oldest = self.now_ms.saturating_sub(self.retention_ms).saturating_add(1);
        // Chunks are chosen on whole milliseconds around the range; points on exact seconds.
        let from_ms = ((from * 1000.0).floor() as i64).max(oldest);
        let to_ms = (to * 1000.0).ceil() as i64;
        let mut by_t: BTreeMap<u64, f64> = BTreeMap::new();
        for (labels, s) in family {
            if !filter.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) {
                continue;
            }
            s.visit(from_ms, to_ms, |t, v| {
                let t = secs(t);
                if t < from || t > to {
                    return;
                }
                let e = by_t.entry(t.to_bits()).or_insert(if quantile { f64::MIN } else { 0.0 });
                *e = if quantile { e.max(v) } else { *e + v };
            });
        }
        let mut out: Vec<Point> = by_t.into_iter().map(|(t, v)| Point { t: f64::from_bits(t), v }).collect();
        out.sort_by(|a, b| a.t.total_cmp(&b.t));
        out
    }

    /// One series' stored values inside the retention window: a counter's raw readings (not
    /// rates), anything else as recorded.
    pub fn samples(&self, name: &str, labels: &Labels) -> Vec<Point> {
        let Some(s) = self.series.get(name).and_then(|f| f.get(labels)) else { return vec![] };
        let oldest = self.now_ms.saturating_sub(self.retention_ms);
        let mut out = Vec::with_capacity(s.points() as usize);
        for c in &s.chunks {
            out.extend(c.chunk.points().filter(|(t, _)| *t > oldest).map(|(t, v)| Point { t: secs(t), v }));
        }
        out
    }

    /// Every metric name (and alias) with its label sets.
    pub fn names(&self) -> Vec<(String, Vec<Labels>)> {
        let mut out: Vec<_> = self.series.iter().map(|(n, f)| (n.clone(), f.keys().cloned().collect())).collect();
        out.sort();
        out
    }

    /// Label values of `label` among the series of `name` (e.g. the `le` bounds of a histogram).
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .series
            .get(name)
            .into_iter()
            .flat_map(|f| f.keys())
            .filter_map(|l| l.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn series_count(&self) -> usize {
        self.count
    }

    pub fn stats(&self) -> Stats {
        let mut st = Stats { series: self.count, ..Stats::default() };
        for s in self.series.values().flat_map(|f| f.values()) {
            st.points += s.points();
            st.chunk_bytes += s.heap_bytes();
            st.bits += s.chunks.iter().map(|c| u64::from(c.chunk.bits())).sum::<u64>();
        }
        st
    }

    /// Every chunk with bits not yet written, in series order, oldest chunk first.
    pub fn outgoing(&self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for (name, family) in &self.series {
            for (labels, s) in family {
                // Chunks are flushed in order: the unwritten ones are at the end, unless a
                // rescan was asked for.
                let first = if self.rescan {
                    0
                } else {
                    s.chunks.len() - s.chunks.iter().rev().take_while(|c| c.flushed < c.chunk.bits()).count()
                };
                for c in s.chunks.range(first..).filter(|c| c.flushed < c.chunk.bits()) {
                    out.push(Outgoing {
                        name: name.clone(),
                        labels: labels.clone(),
                        uid: c.uid,
                        counter: c.counter,
                        prev: c.prev,
                        block: c.chunk.first_t().div_euclid(self.layout.block_ms),
                        from_bit: c.flushed,
                        to_bit: c.chunk.bits(),
                        bytes: c.chunk.bits_from(c.flushed).to_vec(),
                    });
                }
            }
        }
        out
    }

    /// Notes what persistence wrote: chunk `uid` is on disk up to its bit `to_bit`.
    pub fn flushed(&mut self, written: &HashMap<u64, u32>) {
        if written.is_empty() {
            return;
        }
        for s in self.series.values_mut().flat_map(|f| f.values_mut()) {
            for c in s.chunks.iter_mut().rev() {
                match written.get(&c.uid) {
                    Some(&to) => c.flushed = c.flushed.max(to),
                    None if !self.rescan => break,
                    None => {}
                }
            }
        }
        self.rescan = false;
    }

    /// Chunks whose segment file was abandoned after a failed write: written whole again.
    pub fn resend(&mut self, uids: &HashSet<u64>) {
        if uids.is_empty() {
            return;
        }
        for s in self.series.values_mut().flat_map(|f| f.values_mut()) {
            for c in s.chunks.iter_mut().filter(|c| uids.contains(&c.uid)) {
                c.flushed = 0;
            }
        }
        self.rescan = true;
    }

    /// Adds a chunk read back from the data directory (after the series' last point, inside
    /// the retention window; false otherwise). `written`: already in a segment file.
    pub fn restore_chunk(
        &mut self,
        name: &str,
        labels: &Labels,
        counter: bool,
        prev: Option<(i64, f64)>,
        chunk: Chunk,
        written: bool,
    ) -> bool {
        if chunk.count() == 0 || chunk.last_t() <= self.now_ms.saturating_sub(self.retention_ms) {
            return false;
        }
        let bits = chunk.bits();
        self.uid += 1;
        let stored =
            Stored { chunk, uid: self.uid, counter, prev, sealed: true, flushed: if written { bits } else { 0 } };
        if !written {
            self.rescan = true;
        }
        self.make_room(name, labels);
        let Some(s) = self.series.get_mut(name).and_then(|f| f.get_mut(labels)) else { return false };
        let ok = s.restore(stored);
        if s.chunks.is_empty() {
            if let Some(f) = self.series.get_mut(name) {
                f.remove(labels);
                self.count -= 1;
                if f.is_empty() {
                    self.series.remove(name);
                }
            }
        }
        ok
    }
}

/// Cumulative count at `le` in an earlier scrape: its own entry, or that of the largest bound
/// below it (cumulative counts are flat between listed bounds).
fn prev_cumulative(before: &[(f64, f64)], le: f64) -> f64 {
    before.iter().filter(|(l, _)| *l <= le).map(|(_, c)| *c).fold(0.0, f64::max)
}

fn resolve(name: &str) -> (&str, &[(&str, &str)]) {
    ALIASES.iter().find(|(a, _, _)| *a == name).map_or((name, &[][..]), |(_, real, extra)| (real, *extra))
}

/// The family a sample line belongs to and its kind (`x_total` → `x`, `x_bucket` → `x`).
fn family_of<'a>(name: &'a str, kinds: &HashMap<String, Kind>) -> Option<(&'a str, Kind)> {
    if let Some(k) = kinds.get(name) {
        return Some((name, *k));
    }
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(k) = kinds.get(base) {
                return Some((base, *k));
            }
        }
    }
    None
}

/// Quantile from per-bucket counts (upper bound, count), interpolating linearly inside the
/// bucket, as Prometheus' histogram_quantile does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, cum) in buckets {
        if cum >= rank {
            if le.is_infinite() {
                return lower; // beyond the last finite bound: report that bound
            }
            let inside = cum - below;
            return if inside > 0.0 { lower + (le - lower) * (rank - below) / inside } else { le };
        }
        lower = le;
        below = cum;
    }
    lower
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expo::parse;

    #[test]
    fn series_silent_for_a_retention_window_are_forgotten() {
        let mut s = Store::new(60.0, 10.0);
        let up = |targets: &[&str]| {
            let mut t = String::from("# TYPE flotilla_target_up gauge\n");
            for x in targets {
                t.push_str(&format!("flotilla_target_up{{target=\"{x}\"}} 1\n"));
            }
            t
        };
        scrape(&mut s, 0.0, &up(&["a", "b"]));
        scrape(&mut s, 30.0, &up(&["a"]));
        assert_eq!(s.series_count(), 2, "b still has data inside the window");
        scrape(&mut s, 100.0, &up(&["a"]));
        assert_eq!(s.series_count(), 1, "b has been silent for longer than retention");
    }

    #[test]
    fn at_the_cap_the_longest_silent_series_make_room() {
        let mut s = Store::new(1e9, 1.0);
        for i in 0..MAX_SERIES {
            s.push("g", &vec![("i".into(), i.to_string())], Point { t: i as f64, v: 1.0 });
        }
        s.push("g", &vec![("i".into(), "new".into())], Point { t: 1e6, v: 1.0 });
        assert_eq!(s.series_count(), MAX_SERIES - MAX_SERIES / 100 + 1);
        let g = &s.series["g"];
        assert!(g.contains_key(&vec![("i".to_string(), "new".to_string())]), "the new series is recorded");
        assert!(!g.contains_key(&vec![("i".to_string(), "0".to_string())]), "the stalest went");
        assert!(g.contains_key(&vec![("i".to_string(), (MAX_SERIES - 1).to_string())]), "recent ones stay");
    }

    fn scrape(store: &mut Store, t: f64, text: &str) {
        let (s, k) = parse(text);
        store.ingest(t, &s, &k);
    }

    fn text(ok: u64, err: u64, fast: u64, slow: u64) -> String {
        format!(
            "# TYPE flotilla_http_requests counter\n\
             flotilla_http_requests_total{{target_group=\"web\",class=\"2xx\"}} {ok}\n\
             flotilla_http_requests_total{{target_group=\"web\",class=\"5xx\"}} {err}\n\
             # TYPE flotilla_http_request_duration_seconds histogram\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"0.1\",target_group=\"web\"}} {fast}\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"1.0\",target_group=\"web\"}} {}\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"+Inf\",target_group=\"web\"}} {}\n\
             # TYPE flotilla_cache_memory_entries gauge\nflotilla_cache_memory_entries 4\n",
            fast + slow,
            fast + slow
        )
    }

    #[test]
    fn rates_quantiles_and_aliases() {
        let mut st = Store::new(3600.0, 10.0);
        let all = BTreeMap::new();
        scrape(&mut st, 100.0, &text(0, 0, 0, 0));
        scrape(&mut st, 110.0, &text(100, 20, 90, 10));
        // 120 requests in 10 s.
        assert_eq!(st.query("flotilla_http_requests_rate", &all, 0.0, 1e9), vec![Point { t: 110.0, v: 12.0 }]);
        let web = BTreeMap::from([("target_group".to_string(), "web".to_string())]);
        assert_eq!(st.query("http_requests_5xx_rate", &web, 0.0, 1e9)[0].v, 2.0);
        // 90 of 100 under 0.1 s: p50 is inside the first bucket, p95 inside (0.1, 1.0].
        let p50 = st.query("flotilla_http_request_duration_seconds_p50", &web, 0.0, 1e9)[0].v;
        let p95 = st.query("flotilla_http_request_duration_seconds_p95", &web, 0.0, 1e9)[0].v;
        assert!((p50 - 0.0556).abs() < 0.001, "{p50}");
        assert!((p95 - 0.55).abs() < 0.001, "{p95}");
        assert_eq!(st.query("flotilla_cache_memory_entries", &all, 0.0, 1e9).len(), 2);
        // No traffic in the next interval: a zero rate, but no latency datapoint.
        scrape(&mut st, 120.0, &text(100, 20, 90, 10));
        assert_eq!(st.query("http_requests_rate", &all, 115.0, 1e9)[0].v, 0.0);
        assert!(st.query("flotilla_http_request_duration_seconds_p95", &web, 115.0, 1e9).is_empty());
    }

    #[test]
    fn sparse_buckets_that_appear_later() {
        let mut st = Store::new(3600.0, 10.0);
        let h = |b: &str| format!("# TYPE x histogram\n{b}");
        scrape(&mut st, 0.0, &h("x_bucket{le=\"0.01\"} 10\nx_bucket{le=\"+Inf\"} 10\n"));
        // Ten more, all in a bucket not listed before: p50 of this interval must be ~0.02, not
        // dragged down by the earlier ten.
        scrape(&mut st, 10.0, &h("x_bucket{le=\"0.01\"} 10\nx_bucket{le=\"0.02\"} 20\nx_bucket{le=\"+Inf\"} 20\n"));
        let p50 = st.query("x_p50", &BTreeMap::new(), 0.0, 1e9)[0].v;
        assert!((0.01..=0.02).contains(&p50) && p50 > 0.014, "{p50}");
    }

    #[test]
    fn bounded() {
        let mut st = Store::new(30.0, 10.0);
        for i in 0..10 {
            scrape(&mut st, i as f64 * 10.0, "g 1\n");
        }
        assert_eq!(st.query("g", &BTreeMap::new(), 0.0, 1e9).len(), 3);
    }
}
