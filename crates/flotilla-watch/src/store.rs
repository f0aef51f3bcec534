//! The in-process time-series store: one datapoint per series per sample, kept for the
//! retention. Counters are stored as per-second rates (`x_total` → `x_rate`), gauges as they are,
//! histograms as the quantiles of the observations between two samples (`x_p50`, `x_p95`,
//! `x_p99`, plus `x_count_rate`), so a period with no traffic has no latency datapoint — missing
//! data, as CloudWatch would see it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use crate::expo::{Kind, Sample};

/// Series beyond this are dropped (with a log line), so label explosions cannot eat memory.
pub const MAX_SERIES: usize = 20_000;
/// Points per series at most, whatever retention / resolution asks for.
pub const MAX_POINTS: usize = 100_000;

pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub v: f64,
}

struct Series {
    points: VecDeque<Point>,
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

pub struct Store {
    max_points: usize,
    retention_secs: f64,
    series: HashMap<String, BTreeMap<Labels, Series>>,
    count: usize,
    /// Previous raw counter values (for rates) and histogram buckets (for quantiles).
    last_counters: HashMap<(String, Labels), (f64, f64)>,
    last_buckets: HashMap<(String, Labels), (f64, Buckets)>,
    dropped_logged: bool,
}

impl Store {
    pub fn new(retention_secs: f64, resolution_secs: f64) -> Self {
        let max_points = ((retention_secs / resolution_secs.max(0.001)).ceil() as usize).clamp(2, MAX_POINTS);
        Self {
            max_points,
            retention_secs,
            series: HashMap::new(),
            count: 0,
            last_counters: HashMap::new(),
            last_buckets: HashMap::new(),
            dropped_logged: false,
        }
    }

    /// Forgets what has had no sample for a whole retention window: series of targets and
    /// instances that are gone (a fleet replaces them on new ports for as long as it runs),
    /// and the counter and bucket baselines kept for them.
    fn prune(&mut self, t: f64) {
        let horizon = t - self.retention_secs;
        let mut removed = 0;
        for family in self.series.values_mut() {
            family.retain(|_, s| {
                let keep = s.points.back().is_some_and(|p| p.t >= horizon);
                removed += usize::from(!keep);
                keep
            });
        }
        self.series.retain(|_, f| !f.is_empty());
        self.count -= removed;
        self.last_counters.retain(|_, (pt, _)| *pt >= horizon);
        self.last_buckets.retain(|_, (pt, _)| *pt >= horizon);
    }

    /// At the series cap, makes room by dropping the series silent the longest (a hundredth of
    /// the cap at once), so new targets keep being recorded however long the process runs.
    fn evict_stalest(&mut self) {
        let mut last: Vec<(f64, String, Labels)> = self
            .series
            .iter()
            .flat_map(|(name, f)| {
                f.iter().map(move |(l, s)| (s.points.back().map_or(f64::MIN, |p| p.t), name.clone(), l.clone()))
            })
            .collect();
        let n = (MAX_SERIES / 100).max(1).min(last.len());
        last.select_nth_unstable_by(n.saturating_sub(1), |a, b| a.0.total_cmp(&b.0));
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
        self.prune(t);
        let mut buckets: HashMap<(String, Labels), Buckets> = HashMap::new();
        for s in samples {
            let family = family_of(&s.name, kinds);
            match family {
                Some((f, Kind::Counter)) if s.name.ends_with("_total") => {
                    let key = (format!("{f}_rate"), s.labels.clone());
                    if let Some((pt, pv)) = self.last_counters.insert(key.clone(), (t, s.value)) {
                        let dt = t - pt;
                        // A counter that went down was reset: count from zero.
                        let delta = if s.value >= pv { s.value - pv } else { s.value };
                        if dt > 0.0 {
                            self.push(&key.0, &key.1, Point { t, v: delta / dt });
                        }
                    }
                }
                Some((f, Kind::Histogram)) if s.name.ends_with("_bucket") => {
                    let mut labels = s.labels.clone();
                    let Some(pos) = labels.iter().position(|(k, _)| k == "le") else { continue };
                    let le = labels.remove(pos).1;
                    let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                    buckets.entry((f.to_string(), labels)).or_default().push((bound, s.value));
                }
                Some((_, Kind::Histogram)) | Some((_, Kind::Counter)) => {}
                _ => self.push(&s.name, &s.labels, Point { t, v: s.value }),
            }
        }
        for ((family, labels), mut now) in buckets {
            now.sort_by(|a, b| a.0.total_cmp(&b.0));
            let key = (family.clone(), labels.clone());
            let Some((pt, before)) = self.last_buckets.insert(key, (t, now.clone())) else { continue };
            let dt = t - pt;
            // Observations in this interval per bucket (cumulative counts, reset-safe). A bound
            // the previous scrape did not list (sparse histograms list only buckets in use) had
            // the cumulative count of the largest bound below it.
            let delta: Vec<(f64, f64)> = now
                .iter()
                .map(|(le, c)| {
                    let prev = prev_cumulative(&before, *le);
                    (*le, if *c >= prev { c - prev } else { *c })
                })
                .collect();
            let total = delta.last().map_or(0.0, |d| d.1);
            if dt > 0.0 {
                self.push(&format!("{family}_count_rate"), &labels, Point { t, v: total / dt });
                // Per-bucket rates (cumulative: requests at most `le` seconds), for SLOs.
                for (le, c) in now.iter().filter(|(le, _)| le.is_finite()) {
                    let prev = prev_cumulative(&before, *le);
                    let d = if *c >= prev { c - prev } else { *c };
                    let mut with_le = labels.clone();
                    with_le.push(("le".into(), le.to_string()));
                    with_le.sort();
                    self.push(&format!("{family}_bucket_rate"), &with_le, Point { t, v: d / dt });
                }
            }
            if total <= 0.0 {
                continue;
            }
            for (q, suffix) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
                let v = quantile(&delta, q);
                self.push(&format!("{family}_{suffix}"), &labels, Point { t, v });
            }
        }
    }

    fn push(&mut self, name: &str, labels: &Labels, p: Point) {
        if !p.v.is_finite() {
            return;
        }
        let known = self.series.get(name).is_some_and(|f| f.contains_key(labels));
        if !known && self.count >= MAX_SERIES {
            if !self.dropped_logged {
                self.dropped_logged = true;
                tracing::warn!(limit = MAX_SERIES, metric = name, "too many series; dropping the longest silent ones");
            }
            self.evict_stalest();
        }
        let family = self.series.entry(name.to_string()).or_default();
        if !family.contains_key(labels) {
            self.count += 1;
            family.insert(labels.clone(), Series { points: VecDeque::new() });
        }
        if let Some(s) = family.get_mut(labels) {
            if s.points.len() == self.max_points {
                s.points.pop_front();
            }
            s.points.push_back(p);
        }
    }

    /// Points of every series of `name` whose labels include `filter`, combined per timestamp:
    /// summed (rates, gauges) or, for quantiles, the largest. Aliases resolve first.
    pub fn query(&self, name: &str, filter: &BTreeMap<String, String>, from: f64, to: f64) -> Vec<Point> {
        let (real, extra) = resolve(name);
        let mut filter = filter.clone();
        for (k, v) in extra {
            filter.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
        let Some(family) = self.series.get(real) else { return vec![] };
        let quantile = ["_p50", "_p95", "_p99"].iter().any(|s| real.ends_with(s));
        let mut by_t: BTreeMap<u64, f64> = BTreeMap::new();
        for (labels, s) in family {
            if !filter.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) {
                continue;
            }
            for p in s.points.iter().filter(|p| p.t >= from && p.t <= to) {
                let e = by_t.entry(p.t.to_bits()).or_insert(if quantile { f64::MIN } else { 0.0 });
                *e = if quantile { e.max(p.v) } else { *e + p.v };
            }
        }
        let mut out: Vec<Point> = by_t.into_iter().map(|(t, v)| Point { t: f64::from_bits(t), v }).collect();
        out.sort_by(|a, b| a.t.total_cmp(&b.t));
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

    /// Every series with its points, for persistence.
    pub fn dump(&self) -> crate::persist::Dump {
        let mut out = Vec::with_capacity(self.count);
        for (name, family) in &self.series {
            for (labels, s) in family {
                out.push((name.clone(), labels.clone(), s.points.iter().copied().collect()));
            }
        }
        out
    }

    /// Restores persisted series, dropping points older than `oldest`. Returns the points kept.
    pub fn restore(&mut self, dump: crate::persist::Dump, oldest: f64) -> usize {
        let mut kept = 0;
        for (name, labels, points) in dump {
            for p in points.into_iter().filter(|p| p.t >= oldest) {
                self.push(&name, &labels, p);
                kept += 1;
            }
        }
        kept
    }

    pub fn series_count(&self) -> usize {
        self.count
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
