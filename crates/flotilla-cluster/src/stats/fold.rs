//! What a node publishes about its traffic, and how the other nodes' publications are folded
//! into monotonic cluster totals (a node that joins or restarts never shows as a burst or a
//! drop).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Cumulative counts per latency bucket index, as every node's edge lays them out.
pub type Buckets = BTreeMap<u32, u64>;

/// One target as one node sees it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TargetStat {
    pub requests: u64,
    pub in_flight: u32,
    /// Responses by status class, 1xx to 5xx, so far.
    pub classes: [u64; 5],
}

/// What one node publishes.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Published {
    /// target group → target address → counts.
    pub targets: BTreeMap<String, BTreeMap<String, TargetStat>>,
    /// target group → (bucket index, count so far), non-empty buckets only.
    pub latency: BTreeMap<String, Vec<(u32, u64)>>,
}

/// The other nodes' contributions, folded into monotonic totals.
#[derive(Default)]
pub(super) struct Remote {
    last: HashMap<(String, String, String), u64>,
    pub(super) requests: HashMap<(String, SocketAddr), u64>,
    pub(super) in_flight: HashMap<(String, SocketAddr), u32>,
    last_latency: HashMap<(String, String, u32), u64>,
    pub(super) latency: HashMap<String, Buckets>,
    last_class: HashMap<(String, String, String, usize), u64>,
    /// (target group, status class index) → responses.
    pub(super) classes: HashMap<(String, usize), u64>,
}

/// How much a counter grew since `last` (a smaller value means its node restarted). A node seen
/// for the first time contributes from now on, so joining never shows as a burst.
fn growth(last: Option<u64>, now: u64) -> u64 {
    match last {
        None => 0,
        Some(l) if now >= l => now - l,
        Some(_) => now,
    }
}

impl Remote {
    /// Folds one round of the other nodes' publications in.
    pub(super) fn absorb(&mut self, round: &[(String, Published)]) {
        self.in_flight.clear();
        for (node, p) in round {
            for (tg, targets) in &p.targets {
                for (addr, t) in targets {
                    let Ok(sa) = addr.parse::<SocketAddr>() else { continue };
                    let key = (node.clone(), tg.clone(), addr.clone());
                    let grew = growth(self.last.get(&key).copied(), t.requests);
                    self.last.insert(key, t.requests);
                    *self.requests.entry((tg.clone(), sa)).or_default() += grew;
                    *self.in_flight.entry((tg.clone(), sa)).or_default() += t.in_flight;
                    for (class, n) in t.classes.iter().enumerate() {
                        let key = (node.clone(), tg.clone(), addr.clone(), class);
                        let grew = growth(self.last_class.get(&key).copied(), *n);
                        self.last_class.insert(key, *n);
                        *self.classes.entry((tg.clone(), class)).or_default() += grew;
                    }
                }
            }
            for (tg, buckets) in &p.latency {
                for (idx, count) in buckets {
                    let key = (node.clone(), tg.clone(), *idx);
                    let grew = growth(self.last_latency.get(&key).copied(), *count);
                    self.last_latency.insert(key, *count);
                    *self.latency.entry(tg.clone()).or_default().entry(*idx).or_default() += grew;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(addr: &str, requests: u64, buckets: &[(u32, u64)]) -> Published {
        let mut p = Published::default();
        let stat = TargetStat { requests, in_flight: 2, classes: [0, requests, 0, 0, 0] };
        p.targets.entry("web".into()).or_default().insert(addr.into(), stat);
        p.latency.insert("web".into(), buckets.to_vec());
        p
    }

    #[test]
    fn remote_totals_are_monotonic_across_joins_and_restarts() {
        let a = "127.0.0.1:9001";
        let sa: SocketAddr = a.parse().unwrap();
        let mut r = Remote::default();
        r.absorb(&[("b".into(), published(a, 100, &[(40, 10)]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 0, "a node seen first counts from now on");
        r.absorb(&[("b".into(), published(a, 130, &[(40, 15)])), ("c".into(), published(a, 7, &[]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 30);
        assert_eq!(r.in_flight[&("web".into(), sa)], 4, "in flight is the sum of the latest");
        // b restarted: its counter starts again at 5 — that is 5 more, not 125 fewer.
        r.absorb(&[("b".into(), published(a, 5, &[(40, 1)])), ("c".into(), published(a, 17, &[]))]);
        assert_eq!(r.requests[&("web".into(), sa)], 30 + 5 + 10);
        assert_eq!(r.latency["web"][&40], 5 + 1);
        assert_eq!(r.classes[&("web".to_string(), 1)], 45, "classes fold like requests");
    }
}
