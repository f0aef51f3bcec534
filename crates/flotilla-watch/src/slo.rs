//! SLOs over a target group's requests with multi-window, multi-burn-rate alerts, as in the SRE
//! workbook (chapter 5): the error ratio over a window divided by the error budget (1 −
//! objective) is the burn rate; "fast burn" pages when both 1 h and 5 min burn faster than 14.4,
//! or 6 h and 30 min faster than 6; "slow burn" tickets when 1 d and 2 h exceed 3, or 3 d and 6 h
//! exceed 1. The long window says it matters; the short one says it is still happening.
//!
//! Bad requests are the 5xx plus, for a latency SLO, those slower than the latency bound. Both
//! come from separate counters, so a slow 5xx counts twice: the error ratio errs on the safe side.

use std::collections::BTreeMap;

use flotilla_config::{SloConfig, SloKind};
use serde::Serialize;

use crate::store::Store;

pub const WINDOWS: [(&str, f64); 7] = [
    ("5m", 300.0),
    ("30m", 1800.0),
    ("1h", 3600.0),
    ("2h", 7200.0),
    ("6h", 21_600.0),
    ("1d", 86_400.0),
    ("3d", 259_200.0),
];

const REQUESTS: &str = "flotilla_http_requests_rate";
const DURATION: &str = "flotilla_http_request_duration_seconds";
/// The same series summed over every node of a cluster (the binary feeds them to the watch, not
/// to `/metrics`), for `scope = "cluster"`.
const CLUSTER_REQUESTS: &str = "flotilla_cluster_http_requests_rate";
const CLUSTER_DURATION: &str = "flotilla_cluster_http_request_duration_seconds";

#[derive(Debug, Clone, Serialize)]
pub struct SloView {
    pub name: String,
    pub target_group: String,
    pub objective: f64,
    /// "availability", or "latency <= 0.2s" with the histogram bound actually used.
    pub kind: String,
    pub window_secs: f64,
    /// Good / total over the SLO window (as far as retention reaches); None without traffic.
    pub attainment: Option<f64>,
    /// Share of the error budget left over the window (negative when overspent).
    pub error_budget_remaining: Option<f64>,
    pub burn_rates: BTreeMap<&'static str, Option<f64>>,
    pub fast_burn: bool,
    pub slow_burn: bool,
}

pub struct Slo {
    pub cfg: SloConfig,
    pub fast_burn: bool,
    pub slow_burn: bool,
    pub last: Option<SloView>,
}

/// A change of one burn alert, for notifications.
pub struct BurnChange {
    pub alert: &'static str,
    pub firing: bool,
}

impl Slo {
    pub fn new(cfg: SloConfig) -> Self {
        Self { cfg, fast_burn: false, slow_burn: false, last: None }
    }

    /// Recomputes at `now` from the store; returns the alerts that changed.
    pub fn evaluate(&mut self, store: &Store, now: f64) -> Vec<BurnChange> {
        let tg = BTreeMap::from([("target_group".to_string(), self.cfg.target_group.clone())]);
        let (requests, duration) =
            if self.cfg.cluster { (CLUSTER_REQUESTS, CLUSTER_DURATION) } else { (REQUESTS, DURATION) };
        let bound = match self.cfg.kind {
            SloKind::Availability => None,
            SloKind::Latency(d) => Some(latency_bound(store, duration, d.as_secs_f64())),
        };
        let ratio = |secs: f64| -> Option<f64> {
            let from = now - secs;
            let sum = |name: &str, f: &BTreeMap<String, String>| {
                store.query(name, f, from, now).iter().map(|p| p.v).sum::<f64>()
            };
            let total = sum(requests, &tg);
            if total <= 0.0 {
                return None;
            }
            let mut with_class = tg.clone();
            with_class.insert("class".into(), "5xx".into());
            let mut bad = sum(requests, &with_class);
            if let Some(Some(le)) = &bound {
                let mut with_le = tg.clone();
                with_le.insert("le".into(), le.clone());
                let slow =
                    sum(&format!("{duration}_count_rate"), &tg) - sum(&format!("{duration}_bucket_rate"), &with_le);
                bad += slow.max(0.0);
            }
            Some((bad / total).clamp(0.0, 1.0))
        };
        let budget = 1.0 - self.cfg.objective;
        let burn_rates: BTreeMap<&'static str, Option<f64>> =
            WINDOWS.iter().map(|(name, secs)| (*name, ratio(*secs).map(|r| r / budget))).collect();
        let over = |w: &str, x: f64| burn_rates.get(w).copied().flatten().is_some_and(|b| b > x);
        let fast = (over("1h", 14.4) && over("5m", 14.4)) || (over("6h", 6.0) && over("30m", 6.0));
        let slow = (over("1d", 3.0) && over("2h", 3.0)) || (over("3d", 1.0) && over("6h", 1.0));
        let window_ratio = ratio(self.cfg.window.as_secs_f64());
        let kind = match (&self.cfg.kind, &bound) {
            (SloKind::Availability, _) => "availability".to_string(),
            (SloKind::Latency(_), Some(Some(le))) => format!("latency <= {le}s"),
            (SloKind::Latency(d), _) => format!("latency <= {}s (no histogram data yet)", d.as_secs_f64()),
        };
        self.last = Some(SloView {
            name: self.cfg.name.clone(),
            target_group: self.cfg.target_group.clone(),
            objective: self.cfg.objective,
            kind,
            window_secs: self.cfg.window.as_secs_f64(),
            attainment: window_ratio.map(|r| 1.0 - r),
            error_budget_remaining: window_ratio.map(|r| 1.0 - r / budget),
            burn_rates,
            fast_burn: fast,
            slow_burn: slow,
        });
        let mut changes = Vec::new();
        if fast != self.fast_burn {
            self.fast_burn = fast;
            changes.push(BurnChange { alert: "fast_burn", firing: fast });
        }
        if slow != self.slow_burn {
            self.slow_burn = slow;
            changes.push(BurnChange { alert: "slow_burn", firing: slow });
        }
        changes
    }
}

/// The largest bucket bound of the edge's latency histogram not above `secs` (None before the
/// first request). A request "within 200 ms" is one counted in that bucket.
fn latency_bound(store: &Store, duration: &str, secs: f64) -> Option<String> {
    store
        .label_values(&format!("{duration}_bucket_rate"), "le")
        .into_iter()
        .filter_map(|v| v.parse::<f64>().ok().map(|f| (f, v)))
        .filter(|(f, _)| *f <= secs + 1e-12)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expo::parse;
    use std::time::Duration;

    fn scrape(st: &mut Store, t: f64, ok: u64, err: u64, fast: u64, slow: u64) {
        let text = format!(
            "# TYPE flotilla_http_requests counter\n\
             flotilla_http_requests_total{{target_group=\"web\",class=\"2xx\"}} {ok}\n\
             flotilla_http_requests_total{{target_group=\"web\",class=\"5xx\"}} {err}\n\
             # TYPE flotilla_http_request_duration_seconds histogram\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"0.2\",target_group=\"web\"}} {fast}\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"0.5\",target_group=\"web\"}} {n}\n\
             flotilla_http_request_duration_seconds_bucket{{le=\"+Inf\",target_group=\"web\"}} {n}\n",
            n = fast + slow
        );
        let (s, k) = parse(&text);
        st.ingest(t, &s, &k);
    }

    fn slo(kind: SloKind) -> Slo {
        Slo::new(SloConfig {
            name: "s".into(),
            target_group: "web".into(),
            objective: 0.99,
            kind,
            window: Duration::from_secs(30 * 86_400),
            notify: vec![],
            cluster: false,
        })
    }

    #[test]
    fn burn_rates_and_alerts() {
        let mut st = Store::new(86_400.0, 10.0);
        scrape(&mut st, 0.0, 0, 0, 0, 0);
        // 1000 requests: 10 errors (1 %) and 40 slower than 200 ms.
        scrape(&mut st, 10.0, 990, 10, 960, 40);
        let mut avail = slo(SloKind::Availability);
        let ch = avail.evaluate(&st, 10.0);
        let v = avail.last.clone().unwrap();
        // 1 % errors against a 1 % budget: burn rate 1, attainment 99 %.
        assert!((v.burn_rates["5m"].unwrap() - 1.0).abs() < 1e-9, "{v:?}");
        assert!((v.attainment.unwrap() - 0.99).abs() < 1e-9);
        assert!(ch.is_empty() && !v.fast_burn);
        let mut lat = slo(SloKind::Latency(Duration::from_millis(250)));
        let ch = lat.evaluate(&st, 10.0);
        let v = lat.last.clone().unwrap();
        // 10 + 40 bad of 1000 = 5 % → burn 5: no fast burn (needs 14.4) but a slow burn.
        assert_eq!(v.kind, "latency <= 0.2s");
        assert!((v.burn_rates["1h"].unwrap() - 5.0).abs() < 1e-9, "{v:?}");
        assert!(!v.fast_burn && v.slow_burn);
        assert_eq!(ch.iter().map(|c| (c.alert, c.firing)).collect::<Vec<_>>(), vec![("slow_burn", true)]);
        assert!((v.error_budget_remaining.unwrap() - -4.0).abs() < 1e-9);
    }
}
