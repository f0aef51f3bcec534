//! Quantiles over merged latency buckets. The bucket layout is the edge's (this crate does not
//! import the edge), handed in as a [`BucketLayout`] by the binary.
//!
//! Note: `flotilla-watch/src/store.rs` computes quantiles over buckets too; issue 21 moves the
//! bucket layout and one quantile function into `flotilla-core`, and this file then uses it.

use super::fold::Buckets;

/// How the edge's fine latency histogram is laid out, so merged bucket indexes can be read as
/// seconds. Every node uses the same layout: merging is a sum per bucket, exact.
#[derive(Clone, Copy)]
pub struct BucketLayout {
    /// Bucket `i`'s bounds in seconds, `[lower, upper)`.
    pub bounds: fn(usize) -> (f64, f64),
    /// The classic bucket bounds (seconds) a Prometheus-style histogram shows.
    pub classic: &'static [f64],
}

/// A quantile of the latency observed between two cumulative snapshots, interpolated inside the
/// bucket it falls in.
pub fn quantile(layout: &BucketLayout, older: &Buckets, newer: &Buckets, q: f64) -> Option<f64> {
    let deltas: Vec<(u32, u64)> = newer
        .iter()
        .map(|(i, n)| (*i, n.saturating_sub(older.get(i).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut cum = 0u64;
    for (i, d) in deltas {
        if (cum + d) as f64 >= target {
            let (lo, hi) = (layout.bounds)(i as usize);
            return Some(lo + (hi - lo) * ((target - cum as f64) / d as f64));
        }
        cum += d;
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A stand-in for the edge's layout: bucket `i` is `[i ms, i+1 ms)`.
    pub(in crate::stats) fn millis(i: usize) -> (f64, f64) {
        (i as f64 / 1e3, (i + 1) as f64 / 1e3)
    }

    pub(in crate::stats) const LAYOUT: BucketLayout = BucketLayout { bounds: millis, classic: &[0.001, 0.01, 0.1] };

    #[test]
    fn quantiles_of_merged_buckets_are_exact_to_the_bucket() {
        let older: Buckets = [(100, 10)].into();
        // 90 new observations in bucket 100, 10 in bucket 200.
        let newer: Buckets = [(100, 100), (200, 10)].into();
        let (lo100, hi100) = millis(100);
        let (lo200, hi200) = millis(200);
        let p50 = quantile(&LAYOUT, &older, &newer, 0.5).unwrap();
        assert!(lo100 <= p50 && p50 < hi100, "{p50}");
        let p95 = quantile(&LAYOUT, &older, &newer, 0.95).unwrap();
        assert!(lo200 <= p95 && p95 <= hi200, "{p95}");
        assert_eq!(quantile(&LAYOUT, &newer, &newer, 0.95), None, "no traffic in the window");
    }
}
