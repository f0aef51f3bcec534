//! `[budget]`: the month's spend on instance-hours across groups (instances counted from the
//! fleet's `flotilla_group_instances` gauge at every sample, priced per group), a month-end
//! forecast at the current rate, alerts when actual or forecast spend crosses a threshold, and
//! the signal the fleet's guard reads to refuse scale-out (`hard_cap`). Per UTC month; with
//! `[watch] data_dir` the month's spend and the alerts already sent are saved (`Saved`) so a
//! restart neither forgets the spend, lifts the cap, nor sends an alert twice.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_config::time::{days_in_month, month_of, secs_into_month};
use flotilla_config::AccountBudgetConfig;
use serde::{Deserialize, Serialize};

use crate::expo::Sample;

/// What a restart keeps: the month, its spend per group and the alerts sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub month: (i64, u32),
    pub by_group: BTreeMap<String, f64>,
    /// ("actual" | "forecast", threshold in thousandths).
    pub fired: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetView {
    pub currency: String,
    pub monthly: f64,
    pub spent: f64,
    pub forecast: f64,
    /// Current spend rate per hour.
    pub hourly: f64,
    pub by_group: BTreeMap<String, f64>,
    pub alerts_fired: Vec<String>,
    pub capped: bool,
}

pub struct Budget {
    cfg: AccountBudgetConfig,
    month: (i64, u32),
    by_group: BTreeMap<String, f64>,
    hourly: f64,
    last: Option<f64>,
    fired: Vec<(&'static str, u64)>,
}

/// An alert that just fired.
pub struct BudgetAlert {
    pub kind: &'static str,
    pub threshold: f64,
    pub view: BudgetView,
}

impl Budget {
    pub fn new(cfg: AccountBudgetConfig) -> Self {
        Self {
            cfg,
            month: month_of(SystemTime::now()),
            by_group: BTreeMap::new(),
            hourly: 0.0,
            last: None,
            fired: vec![],
        }
    }

    fn spent(&self) -> f64 {
        self.by_group.values().sum()
    }

    /// Accrues the instances in `samples` since the previous call (at `t`, epoch seconds).
    pub fn accrue(&mut self, t: f64, samples: &[Sample]) -> Vec<BudgetAlert> {
        let now = UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
        let month = month_of(now);
        if month != self.month {
            self.month = month;
            self.by_group.clear();
            self.fired.clear();
        }
        let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == "flotilla_group_instances") {
            if let Some((_, g)) = s.labels.iter().find(|(k, _)| k == "group") {
                *counts.entry(g.as_str()).or_default() += s.value;
            }
        }
        let hours = self.last.map_or(0.0, |l| ((t - l) / 3600.0).max(0.0));
        self.last = Some(t);
        self.hourly = 0.0;
        for (g, n) in counts {
            let price = self.cfg.instance_hour.get(g).copied().unwrap_or(0.0);
            *self.by_group.entry(g.to_string()).or_default() += n * price * hours;
            self.hourly += n * price;
        }
        let view = self.view_at(now);
        // Thresholds compare unrounded amounts, as `capped` does.
        let spent = self.spent();
        let forecast = spent + self.hourly * left_hours(self.month, now);
        let mut out = Vec::new();
        for (kind, amount) in [("actual", spent), ("forecast", forecast)] {
            for &th in &self.cfg.alerts {
                let key = (kind, (th * 1000.0).round() as u64);
                if amount >= th * self.cfg.monthly && !self.fired.contains(&key) {
                    self.fired.push(key);
                    out.push(BudgetAlert { kind, threshold: th, view: view.clone() });
                }
            }
        }
        out
    }

    pub fn export(&self) -> Saved {
        Saved {
            month: self.month,
            by_group: self.by_group.clone(),
            fired: self.fired.iter().map(|(k, th)| (k.to_string(), *th)).collect(),
        }
    }

    /// Takes back a saved month (another month's state is ignored: the new month starts from
    /// zero). Amounts that are not finite and non-negative, and unknown alert kinds, are dropped.
    pub fn import(&mut self, saved: Saved) -> bool {
        if saved.month != self.month {
            return false;
        }
        self.by_group = saved.by_group.into_iter().filter(|(_, v)| v.is_finite() && *v >= 0.0 && *v < 1e15).collect();
        self.fired = saved
            .fired
            .into_iter()
            .filter_map(|(k, th)| match k.as_str() {
                "actual" => Some(("actual", th)),
                "forecast" => Some(("forecast", th)),
                _ => None,
            })
            .collect();
        true
    }

    /// True when `hard_cap` is on and the month's budget is spent.
    pub fn capped(&self) -> bool {
        self.cfg.hard_cap && self.spent() >= self.cfg.monthly
    }

    pub fn view(&self) -> BudgetView {
        self.view_at(SystemTime::now())
    }

    fn view_at(&self, now: SystemTime) -> BudgetView {
        let left_hours = left_hours(self.month, now);
        let spent = self.spent();
        let round = |x: f64| (x * 100.0).round() / 100.0;
        BudgetView {
            currency: self.cfg.currency.clone(),
            monthly: self.cfg.monthly,
            spent: round(spent),
            forecast: round(spent + self.hourly * left_hours),
            hourly: round(self.hourly),
            by_group: self.by_group.iter().map(|(g, v)| (g.clone(), round(*v))).collect(),
            alerts_fired: self.fired.iter().map(|(k, th)| format!("{k} {} %", th / 10)).collect(),
            capped: self.capped(),
        }
    }

    pub fn notify(&self) -> &[String] {
        &self.cfg.notify
    }
}

/// Hours from `now` to the end of the month `(year, month)`.
fn left_hours((y, m): (i64, u32), now: SystemTime) -> f64 {
    ((days_in_month(y, m) as f64 * 86_400.0 - secs_into_month(now)) / 3600.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances(group: &str, n: f64) -> Vec<Sample> {
        vec![Sample {
            name: "flotilla_group_instances".into(),
            labels: vec![("group".into(), group.into()), ("state".into(), "in_service".into())],
            value: n,
        }]
    }

    #[test]
    fn accrues_forecasts_and_alerts_once() {
        let cfg = AccountBudgetConfig {
            currency: "EUR".into(),
            monthly: 10.0,
            instance_hour: BTreeMap::from([("web".into(), 1.0)]),
            alerts: vec![0.5, 1.0],
            notify: vec![],
            hard_cap: true,
        };
        let mut b = Budget::new(cfg);
        // 2026-11-10 00:00 UTC: 21 days (504 h) left in November.
        let t0 = 1_794_268_800.0;
        // At 2/h with 504 h left the month would end at 1008: both forecast alerts at once.
        let fired = b.accrue(t0, &instances("web", 2.0));
        let kinds: Vec<_> = fired.iter().map(|a| (a.kind, a.threshold)).collect();
        assert_eq!(kinds, vec![("forecast", 0.5), ("forecast", 1.0)]);
        assert_eq!(fired[0].view.forecast, 1008.0);
        // Two instances for one hour: 2 spent, no new alert.
        assert!(b.accrue(t0 + 3600.0, &instances("web", 2.0)).is_empty());
        assert_eq!(b.view().by_group["web"], 2.0);
        assert!(!b.capped());
        // Three more hours: 8 spent... then 10: actual alerts, each once; the cap holds.
        let fired = b.accrue(t0 + 4.0 * 3600.0, &instances("web", 2.0));
        assert_eq!(fired.iter().map(|a| (a.kind, a.threshold)).collect::<Vec<_>>(), vec![("actual", 0.5)]);
        let fired = b.accrue(t0 + 5.0 * 3600.0, &instances("web", 2.0));
        assert_eq!(fired.iter().map(|a| (a.kind, a.threshold)).collect::<Vec<_>>(), vec![("actual", 1.0)]);
        assert!(b.capped());
        assert!(b.accrue(t0 + 6.0 * 3600.0, &instances("web", 2.0)).is_empty());
    }

    #[test]
    fn a_saved_month_is_taken_back_with_its_alerts() {
        let cfg = AccountBudgetConfig {
            currency: "EUR".into(),
            monthly: 10.0,
            instance_hour: BTreeMap::from([("web".into(), 1.0)]),
            alerts: vec![0.5, 1.0],
            notify: vec![],
            hard_cap: true,
        };
        let t0 = 1_794_268_800.0;
        let mut b = Budget::new(cfg.clone());
        b.month = month_of(UNIX_EPOCH + Duration::from_secs_f64(t0));
        b.accrue(t0, &instances("web", 10.0));
        assert_eq!(b.accrue(t0 + 3600.0, &instances("web", 10.0)).len(), 2, "actual 50 % and 100 %");
        let saved = b.export();
        assert!(b.capped());
        // A restart: the same month comes back, capped, and sends none of the alerts again.
        let mut again = Budget::new(cfg.clone());
        again.month = saved.month;
        assert!(again.import(saved.clone()));
        assert!(again.capped());
        assert_eq!(again.view().spent, 10.0);
        assert!(again.accrue(t0 + 3700.0, &instances("web", 10.0)).is_empty());
        assert!(again.accrue(t0 + 7200.0, &instances("web", 10.0)).is_empty());
        // Another month's state is not this month's.
        let mut next = Budget::new(cfg);
        next.month = (saved.month.0, saved.month.1 % 12 + 1);
        assert!(!next.import(saved));
        assert!(!next.capped());
    }

    #[test]
    fn a_new_month_starts_from_zero_and_alerts_again() {
        let cfg = AccountBudgetConfig {
            currency: "EUR".into(),
            monthly: 1.0,
            instance_hour: BTreeMap::from([("web".into(), 1.0)]),
            alerts: vec![1.0],
            notify: vec![],
            hard_cap: true,
        };
        let mut b = Budget::new(cfg);
        // The clock runs on the timestamps given: 2026-11-30 22:00 → 23:59:59 → 2026-12-01 00:30.
        let nov30_22h = 1_796_076_000.0;
        b.accrue(nov30_22h, &instances("web", 1.0));
        let fired = b.accrue(nov30_22h + 7199.0, &instances("web", 1.0));
        assert!(fired.iter().any(|a| a.kind == "actual"), "2 h at 1/h spends the budget of 1");
        assert!(b.capped());
        let fired = b.accrue(nov30_22h + 7200.0 + 1800.0, &instances("web", 1.0));
        assert!(!b.capped(), "December starts from zero");
        assert!(b.view().spent < 1.0);
        // The forecast for December (1/h for 31 days) crosses the budget again: alerted anew.
        assert!(fired.iter().any(|a| a.kind == "forecast"));
    }
}
