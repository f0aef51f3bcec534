//! The group's monthly budget: instance-seconds priced as they accrue, alerts when actual spend
//! crosses a threshold, and (with `hard_cap`) no scale-out once the budget is spent.
//!
//! Spend is kept for the current UTC calendar month. With `[watch] data_dir` the group saves it
//! with the thresholds already alerted on (`Saved`), so a restart keeps the spend, the cap and
//! the alerts sent; without it a restart starts from zero.

use std::time::{Instant, SystemTime};

use flotilla_config::BudgetConfig;
use serde::{Deserialize, Serialize};

/// What a restart keeps of the month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub month: (i64, u32),
    pub spent: f64,
    pub alerted: Vec<u32>,
}

use crate::time::{days_in_month, month_of};

pub struct BudgetState {
    cfg: BudgetConfig,
    month: (i64, u32),
    spent: f64,
    /// Thresholds already alerted on this month.
    alerted: Vec<u32>,
    last: Instant,
    /// Instances being billed at the last accrual (for the forecast).
    rate_instances: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetView {
    pub monthly: f64,
    pub spent: f64,
    /// Spend by the end of the month at the current instance count.
    pub forecast: f64,
    pub percent: f64,
    pub capped: bool,
}

impl BudgetState {
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            cfg,
            month: month_of(SystemTime::now()),
            spent: 0.0,
            alerted: vec![],
            last: Instant::now(),
            rate_instances: 0,
        }
    }

    pub fn reconfigure(&mut self, cfg: BudgetConfig) {
        self.alerted.retain(|a| cfg.alerts.contains(a));
        self.cfg = cfg;
    }

    /// Adds the cost of `billed` instances since the last call; returns the alert thresholds
    /// crossed now (each fires once a month).
    pub fn accrue(&mut self, billed: u32) -> Vec<u32> {
        let now = Instant::now();
        let month = month_of(SystemTime::now());
        if month != self.month {
            self.month = month;
            self.spent = 0.0;
            self.alerted.clear();
        }
        let hours = now.duration_since(self.last).as_secs_f64() / 3600.0;
        self.last = now;
        self.spent += hours * billed as f64 * self.cfg.price_per_instance_hour;
        self.rate_instances = billed;
        let pct = self.percent();
        let crossed: Vec<u32> =
            self.cfg.alerts.iter().copied().filter(|a| pct >= *a as f64 && !self.alerted.contains(a)).collect();
        self.alerted.extend(&crossed);
        crossed
    }

    fn percent(&self) -> f64 {
        self.spent / self.cfg.monthly * 100.0
    }

    /// True when `hard_cap` is on and the month's budget is spent: scale-out is refused.
    pub fn capped(&self) -> bool {
        self.cfg.hard_cap && self.spent >= self.cfg.monthly
    }

    pub fn view(&self) -> BudgetView {
        let (y, m) = self.month;
        let secs_in_month = days_in_month(y, m) as f64 * 86_400.0;
        let elapsed = crate::time::secs_into_month(SystemTime::now());
        let left_hours = (secs_in_month - elapsed).max(0.0) / 3600.0;
        let forecast = self.spent + left_hours * self.rate_instances as f64 * self.cfg.price_per_instance_hour;
        let round = |x: f64| (x * 100.0).round() / 100.0;
        BudgetView {
            monthly: self.cfg.monthly,
            spent: round(self.spent),
            forecast: round(forecast),
            percent: round(self.percent()),
            capped: self.capped(),
        }
    }

    pub fn export(&self) -> Saved {
        Saved { month: self.month, spent: self.spent, alerted: self.alerted.clone() }
    }

    /// Takes back the saved month; another month's (or an amount that is not a finite,
    /// non-negative number) is ignored and the month starts from zero.
    pub fn import(&mut self, saved: Saved) -> bool {
        if saved.month != self.month || !saved.spent.is_finite() || !(0.0..1e15).contains(&saved.spent) {
            return false;
        }
        self.spent = saved.spent;
        self.alerted = saved.alerted.into_iter().filter(|a| self.cfg.alerts.contains(a)).collect();
        // Billing restarts now: instances do not outlive flotilla, so the downtime cost nothing.
        self.last = Instant::now();
        true
    }

    pub fn monthly(&self) -> f64 {
        self.cfg.monthly
    }

    pub fn spent(&self) -> f64 {
        self.spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BudgetConfig {
        BudgetConfig { price_per_instance_hour: 3600.0, monthly: 10.0, alerts: vec![50, 100], hard_cap: true }
    }

    #[test]
    fn a_restart_keeps_the_spend_the_cap_and_the_alerts_sent() {
        let mut b = BudgetState::new(cfg());
        b.spent = 9.0;
        assert_eq!(b.accrue(0), vec![50]);
        b.spent = 10.5;
        assert_eq!(b.accrue(0), vec![100]);
        assert!(b.capped());
        let saved = b.export();
        let mut again = BudgetState::new(cfg());
        assert!(again.import(saved.clone()));
        assert!(again.capped(), "the cap holds across the restart");
        assert!(again.accrue(1).is_empty(), "no alert is repeated");
        assert!(again.spent() >= 10.5);
        // Another month, or a damaged amount, starts from zero.
        let mut other = BudgetState::new(cfg());
        assert!(!other.import(Saved { month: (1999, 1), ..saved.clone() }));
        assert!(!other.import(Saved { spent: f64::NAN, ..saved }));
        assert!(!other.capped());
    }
}
