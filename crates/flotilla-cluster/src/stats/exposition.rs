//! The cluster's request and latency series as exposition text for the watch (not `/metrics`,
//! which stays per node): `flotilla_cluster_http_requests_total{target_group,class}` and the
//! classic `flotilla_cluster_http_request_duration_seconds` histogram, from every node's counts.
//! `slos[].scope = "cluster"` reads them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::fold::{Buckets, Remote};
use super::quantile::BucketLayout;

/// This node's folded totals plus the other nodes', as exposition text.
pub(super) fn render(own: &Remote, remote: &Remote, layout: &BucketLayout) -> String {
    let mut classes: BTreeMap<(String, usize), u64> = BTreeMap::new();
    for (k, v) in own.classes.iter().chain(remote.classes.iter()) {
        *classes.entry(k.clone()).or_default() += v;
    }
    let mut latency: BTreeMap<String, Buckets> = BTreeMap::new();
    for (tg, b) in own.latency.iter().chain(remote.latency.iter()) {
        let m = latency.entry(tg.clone()).or_default();
        for (i, c) in b {
            *m.entry(*i).or_default() += c;
        }
    }
    let mut out = String::from("# TYPE flotilla_cluster_http_requests counter\n");
    for ((tg, class), n) in &classes {
        let _ = writeln!(
            out,
            "flotilla_cluster_http_requests_total{{target_group=\"{tg}\",class=\"{}xx\"}} {n}",
            class + 1
        );
    }
    out.push_str("# TYPE flotilla_cluster_http_request_duration_seconds histogram\n");
    let name = "flotilla_cluster_http_request_duration_seconds";
    for (tg, b) in &latency {
        let count: u64 = b.values().sum();
        for &bound in layout.classic {
            let cum: u64 =
                b.iter().filter(|(i, _)| (layout.bounds)(**i as usize).1 <= bound + 1e-9).map(|(_, c)| c).sum();
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\",target_group=\"{tg}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",target_group=\"{tg}\"}} {count}");
        let _ = writeln!(out, "{name}_count{{target_group=\"{tg}\"}} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::fold::{Published, TargetStat};
    use crate::stats::quantile::tests::LAYOUT;

    fn round(node: &str, requests: u64, buckets: &[(u32, u64)]) -> Vec<(String, Published)> {
        let mut p = Published::default();
        let stat = TargetStat { requests, in_flight: 0, classes: [0, requests, 0, 0, requests / 10] };
        p.targets.entry("web".into()).or_default().insert("127.0.0.1:9001".into(), stat);
        p.latency.insert("web".into(), buckets.to_vec());
        vec![(node.into(), p)]
    }

    #[test]
    fn classes_and_classic_buckets_sum_every_node() {
        let (mut own, mut remote) = (Remote::default(), Remote::default());
        // A first sighting counts from zero: only what grew after it is in the totals.
        own.absorb(&round("a", 0, &[(0, 1), (50, 1)]));
        own.absorb(&round("a", 20, &[(0, 5), (50, 7)]));
        remote.absorb(&round("b", 0, &[(5, 2)]));
        remote.absorb(&round("b", 30, &[(5, 12)]));
        let text = render(&own, &remote, &LAYOUT);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        has(r#"flotilla_cluster_http_requests_total{target_group="web",class="2xx"} 50"#);
        has(r#"flotilla_cluster_http_requests_total{target_group="web",class="5xx"} 5"#);
        // Buckets are [i ms, i+1 ms): index 0 is under 1 ms, 5 under 10 ms, 50 under 100 ms.
        has(r#"flotilla_cluster_http_request_duration_seconds_bucket{le="0.001",target_group="web"} 4"#);
        has(r#"flotilla_cluster_http_request_duration_seconds_bucket{le="0.01",target_group="web"} 14"#);
        has(r#"flotilla_cluster_http_request_duration_seconds_bucket{le="0.1",target_group="web"} 20"#);
        has(r#"flotilla_cluster_http_request_duration_seconds_bucket{le="+Inf",target_group="web"} 20"#);
        has(r#"flotilla_cluster_http_request_duration_seconds_count{target_group="web"} 20"#);
    }
}
