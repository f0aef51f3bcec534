//! The group's monthly budget: instance-seconds priced as they accrue, alerts when actual spend
//! crosses a threshold, and (with `hard_cap`) no scale-out once the budget is spent.
//!
//! Spend is kept in memory for the current UTC calendar month; a restart starts from zero.

use std::time::{Instant, SystemTime};

use flotilla_config::BudgetConfig;
use serde::Serialize;

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

    pub fn monthly(&self) -> f64 {
        self.cfg.monthly
    }

    pub fn spent(&self) -> f64 {
        self.spent
    }
}
