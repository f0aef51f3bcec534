//! Request latency per target group: a lock-free log-linear histogram (HDR-style: 32 linear
//! sub-buckets per power of two of microseconds, so a bucket is at most ~3 % wide and
//! interpolated percentiles land within ~1.5 %).
//!
//! It replaces prometheus-client's histogram on the request path, which takes a write lock per
//! observation on a histogram every worker shares. Recording is three relaxed atomic adds.
//! `/metrics` still shows the classic fixed buckets (summed from the fine ones); the watch also
//! gets the fine buckets (`encode_fine`) to compute exact-enough p95/p99.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Linear sub-buckets per power of two (2^5).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Octaves covered: 1 µs .. 2^36 µs (~19 h); slower requests land in the last bucket.
const OCTAVES: u64 = 36;
const BUCKETS: usize = ((OCTAVES + 1) * SUB) as usize;

/// The classic bucket bounds (seconds) shown on `/metrics`: fine below 100 ms, coarse above.
pub const CLASSIC: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Bucket of a value in microseconds: exact below 32 µs, then 32 per octave.
fn index(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros() as u64; // >= SUB_BITS
    let shift = msb - SUB_BITS as u64;
    let sub = (us >> shift) & (SUB - 1);
    (((shift + 1) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// Bucket `i`'s bounds in seconds, `[lower, upper)`, for quantiles over merged buckets.
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let lower = if i == 0 { 0 } else { upper_micros(i - 1) };
    (lower as f64 / 1e6, upper_micros(i) as f64 / 1e6)
}

/// Exclusive upper bound of bucket `i`, in microseconds.
fn upper_micros(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i + 1;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    (SUB + sub + 1) << shift
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let b: Vec<u64> = self.buckets.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        // The count is the sum of the buckets read, so the exposition is self-consistent.
        let count = b.iter().sum();
        (b, count, self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// Every group's histogram, kept across reloads (a group recreated by a reload keeps its data).
#[derive(Default)]
pub struct Latencies {
    by_group: Mutex<BTreeMap<String, Arc<LatencyHistogram>>>,
}

impl Latencies {
    pub fn get_or_create(&self, group: &str) -> Arc<LatencyHistogram> {
        let mut m = self.by_group.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(group.to_string()).or_default().clone()
    }

    fn each(&self) -> Vec<(String, Arc<LatencyHistogram>)> {
        self.by_group.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every group's non-empty fine buckets as (index, cumulative-over-time count): the exact
    /// form other nodes sum, bucket by bucket, to get a cluster's histogram.
    pub fn sparse(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.each()
            .into_iter()
            .map(|(group, h)| {
                let (b, _, _) = h.snapshot();
                let nz = b.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u32, *c)).collect();
                (group, nz)
            })
            .collect()
    }

    /// The classic histogram family (OpenMetrics text), as prometheus-client would write it.
    pub fn encode_classic(&self, out: &mut String) {
        let name = "flotilla_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from request received to response head sent, by target group.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (group, h) in self.each() {
            let (b, count, sum) = h.snapshot();
            let _ = writeln!(out, "{name}_sum{{target_group=\"{}\"}} {sum}", escape(&group));
            let _ = writeln!(out, "{name}_count{{target_group=\"{}\"}} {count}", escape(&group));
            for bound in CLASSIC {
                let limit = (bound * 1e6).round() as u64;
                let cum: u64 =
                    b.iter().enumerate().take_while(|(i, _)| upper_micros(*i) <= limit).map(|(_, c)| c).sum();
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\",target_group=\"{}\"}} {cum}", escape(&group));
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",target_group=\"{}\"}} {count}", escape(&group));
        }
    }

    /// The fine buckets as a histogram family for the watch: cumulative counts at every bound
    /// up to the highest bucket in use (plus +Inf), so quantiles interpolate inside ~3 % wide
    /// buckets.
    pub fn encode_fine(&self, out: &mut String) {
        let name = "flotilla_http_request_latency_fine_seconds";
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (group, h) in self.each() {
            let (b, count, _) = h.snapshot();
            let Some(top) = b.iter().rposition(|c| *c > 0) else { continue };
            let mut cum = 0;
            for (i, c) in b.iter().enumerate().take(top + 1) {
                cum += c;
                if *c > 0 || i == top {
                    let le = upper_micros(i) as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\",target_group=\"{}\"}} {cum}", escape(&group));
                }
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",target_group=\"{}\"}} {count}", escape(&group));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut prev = 0;
        for i in 0..BUCKETS - 1 {
            let up = upper_micros(i);
            assert!(up > prev, "bucket {i}");
            // Every value in [prev, up) maps to i.
            assert_eq!(index(prev), i, "lower edge of {i}");
            assert_eq!(index(up - 1), i, "upper edge of {i}");
            if prev >= 64 {
                assert!((up - prev) as f64 / prev as f64 <= 1.0 / 32.0 + 1e-9, "bucket {i} too wide");
            }
            prev = up;
        }
    }

    /// Interpolated quantile from the fine exposition, as the watch computes it.
    fn quantile(text: &str, q: f64) -> f64 {
        let mut b: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let c: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, c))
            })
            .collect();
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
        let rank = q * b.last().unwrap().1;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, cum) in b {
            if cum >= rank {
                return lower + (le - lower) * (rank - below) / (cum - below).max(1e-9);
            }
            lower = le;
            below = cum;
        }
        lower
    }

    #[test]
    fn fine_percentiles_are_within_about_one_percent() {
        // Latencies spread from 0.5 ms to 2 s on a log scale, 20 000 of them.
        let l = Latencies::default();
        let h = l.get_or_create("g");
        let mut exact: Vec<f64> = (0..20_000).map(|i| 0.0005 * (4000f64).powf(i as f64 / 19_999.0)).collect();
        for v in &exact {
            h.observe(Duration::from_secs_f64(*v));
        }
        exact.sort_by(f64::total_cmp);
        let mut text = String::new();
        l.encode_fine(&mut text);
        for q in [0.5, 0.95, 0.99] {
            let want = exact[(q * (exact.len() - 1) as f64).round() as usize];
            let got = quantile(&text, q);
            assert!((got - want).abs() / want < 0.015, "p{} = {got}, exact {want}", q * 100.0);
        }
    }

    #[test]
    fn classic_and_fine_expositions() {
        let l = Latencies::default();
        let h = l.get_or_create("web");
        for ms in [1u64, 2, 3, 150, 250] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        l.encode_classic(&mut out);
        assert!(
            out.contains("flotilla_http_request_duration_seconds_bucket{le=\"0.2\",target_group=\"web\"} 4"),
            "{out}"
        );
        assert!(out.contains("flotilla_http_request_duration_seconds_count{target_group=\"web\"} 5"));
        let mut fine = String::new();
        l.encode_fine(&mut fine);
        assert_eq!(fine.matches("_bucket{").count(), 6, "{fine}");
        assert!(fine.contains("le=\"+Inf\",target_group=\"web\"} 5"));
    }
}
