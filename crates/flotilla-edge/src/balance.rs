//! Choosing one target among the eligible ones. Pure functions over a candidate slice, so each
//! algorithm is testable without sockets.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use flotilla_config::Algorithm;

use crate::target::Target;

/// A candidate with its effective (slow-start adjusted, ×1000) weight.
pub(crate) struct Candidate<'a> {
    pub target: &'a Arc<Target>,
    pub weight: u64,
}

/// Picks an index into `cands` (non-empty). `key` is the hash input for hash algorithms.
pub(crate) fn pick(algorithm: Algorithm, cands: &[Candidate<'_>], rr: &AtomicUsize, key: Option<&[u8]>) -> usize {
    debug_assert!(!cands.is_empty());
    if cands.len() == 1 {
        return 0;
    }
    match algorithm {
        Algorithm::RoundRobin => round_robin(cands, rr),
        Algorithm::Random => weighted_random(cands),
        Algorithm::LeastOutstanding => two_choices(cands),
        Algorithm::HashHeader | Algorithm::HashIp => match key {
            Some(k) => rendezvous(cands, k),
            None => two_choices(cands),
        },
    }
}

fn round_robin(cands: &[Candidate<'_>], rr: &AtomicUsize) -> usize {
    let n = rr.fetch_add(1, Ordering::Relaxed);
    let first = cands[0].weight;
    if cands.iter().all(|c| c.weight == first) {
        return n % cands.len();
    }
    // Weighted: walk the cumulative weights (in units of the smallest weight to keep cycles short).
    let unit = cands.iter().map(|c| c.weight).min().unwrap_or(1).max(1);
    let total: u64 = cands.iter().map(|c| c.weight.div_ceil(unit)).sum();
    let mut slot = (n as u64) % total.max(1);
    for (i, c) in cands.iter().enumerate() {
        let w = c.weight.div_ceil(unit);
        if slot < w {
            return i;
        }
        slot -= w;
    }
    cands.len() - 1
}

fn weighted_random(cands: &[Candidate<'_>]) -> usize {
    let total: u64 = cands.iter().map(|c| c.weight).sum();
    let mut x = fastrand::u64(0..total.max(1));
    for (i, c) in cands.iter().enumerate() {
        if x < c.weight {
            return i;
        }
        x -= c.weight;
    }
    cands.len() - 1
}

/// Power of two choices: two weighted-random candidates, keep the one with fewer in-flight
/// requests per unit of weight. Near-optimal load spread without a global scan or lock.
fn two_choices(cands: &[Candidate<'_>]) -> usize {
    let a = weighted_random(cands);
    let mut b = weighted_random(cands);
    if b == a {
        b = (a + 1 + fastrand::usize(0..cands.len() - 1)) % cands.len();
    }
    // Ties (e.g. both idle) keep the weighted-random first choice, so idle spread follows weights.
    let load = |i: usize| u64::from(cands[i].target.outstanding()) * 1_000_000 / cands[i].weight.max(1);
    if load(b) < load(a) {
        b
    } else {
        a
    }
}

/// Weighted rendezvous (highest random weight) hashing: the same key keeps its target while the
/// target set changes, and only keys of a removed target move.
fn rendezvous(cands: &[Candidate<'_>], key: &[u8]) -> usize {
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, c) in cands.iter().enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        c.target.addr.hash(&mut h);
        // Map the hash to (0, 1) and score as w / -ln(u), the standard weighted HRW form.
        let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = c.weight as f64 / -u.ln();
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{TargetSource, TargetState};

    fn targets(weights: &[u32]) -> Vec<Arc<Target>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Target::new(addr, None, w, TargetSource::Config, TargetState::Healthy, Default::default()))
            })
            .collect()
    }

    fn cands(ts: &[Arc<Target>]) -> Vec<Candidate<'_>> {
        ts.iter().map(|t| Candidate { target: t, weight: u64::from(t.weight()) * 1000 }).collect()
    }

    fn spread(alg: Algorithm, weights: &[u32], n: usize) -> Vec<usize> {
        let ts = targets(weights);
        let cs = cands(&ts);
        let rr = AtomicUsize::new(0);
        let mut counts = vec![0; ts.len()];
        for i in 0..n {
            let key = (i as u64).to_le_bytes();
            counts[pick(alg, &cs, &rr, Some(&key))] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_exact() {
        assert_eq!(spread(Algorithm::RoundRobin, &[1, 1, 1], 300), vec![100, 100, 100]);
        assert_eq!(spread(Algorithm::RoundRobin, &[1, 2], 300), vec![100, 200]);
    }

    #[test]
    fn random_algorithms_follow_weights() {
        for alg in [Algorithm::Random, Algorithm::LeastOutstanding, Algorithm::HashIp] {
            let c = spread(alg, &[1, 3], 20_000);
            let share = c[1] as f64 / 20_000.0;
            assert!((0.70..0.80).contains(&share), "{alg:?}: {c:?}");
        }
    }

    #[test]
    fn two_choices_avoids_the_busy_target() {
        let ts = targets(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| ts[0].begin()).collect();
        let cs = cands(&ts);
        let rr = AtomicUsize::new(0);
        for _ in 0..100 {
            assert_eq!(pick(Algorithm::LeastOutstanding, &cs, &rr, None), 1);
        }
    }

    #[test]
    fn rendezvous_is_stable_when_a_target_leaves() {
        let ts = targets(&[1, 1, 1, 1]);
        let all = cands(&ts);
        let rest = cands(&ts[..3]);
        let rr = AtomicUsize::new(0);
        for k in 0u32..500 {
            let key = k.to_le_bytes();
            let a = pick(Algorithm::HashHeader, &all, &rr, Some(&key));
            if a < 3 {
                assert_eq!(pick(Algorithm::HashHeader, &rest, &rr, Some(&key)), a, "key {k} moved");
            }
        }
    }
}
