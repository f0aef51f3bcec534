//! What a group keeps across a restart, with `[watch] data_dir`: its budget's month (spend and
//! the alerts already recorded, so the cap stays in force and no alert repeats), the scheduler's
//! last minute (no scheduled action runs twice, none due during the downtime is skipped) and the
//! bounds the last scheduled action set. One file per group, `DATA_DIR/groups/NAME.state`,
//! replaced atomically (`flotilla_watch::state_file`): at once after an alert or a scheduled
//! action, otherwise at most once a minute while the spend moves, and when the group stops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{GroupHandle, Reconciler};
use crate::budget;

/// Spend alone is written at most this often (a crash loses at most this much of it).
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// (min, max, desired).
type Bounds = (u32, u32, u32);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    budget: Option<budget::Saved>,
    /// The scheduler's last minute considered (minutes since the epoch).
    last_minute: i64,
    /// The config's bounds when the action below ran: a changed config wins over it.
    config: Bounds,
    /// The bounds the last scheduled action set, if one ran on this config.
    scheduled: Option<Bounds>,
}

pub(crate) struct Saver {
    path: PathBuf,
    config: Bounds,
    pub scheduled: Option<Bounds>,
    /// Scheduled actions applied (each is saved at once).
    pub actions: u64,
    saved_actions: u64,
    last: Option<Saved>,
    written_at: Option<Instant>,
    failing: bool,
}

/// Reads the group's saved state into it; returns the saver and the scheduler's saved minute.
pub(crate) fn restore(handle: &GroupHandle, path: PathBuf) -> (Saver, Option<i64>) {
    let mut s = handle.lock();
    let config = (s.cfg.min, s.cfg.max, s.cfg.desired);
    let saved: Option<Saved> = flotilla_watch::state_file::read(&path, "group state");
    let mut sv = Saver {
        path,
        config,
        scheduled: None,
        actions: 0,
        saved_actions: 0,
        last: None,
        written_at: None,
        failing: false,
    };
    let Some(saved) = saved else { return (sv, None) };
    if let (Some(b), Some(sb)) = (s.budget.as_mut(), saved.budget.clone()) {
        let spent = sb.spent;
        if b.import(sb) {
            tracing::info!(group = %s.cfg.name, spent, "the month's budget spend restored");
        }
    }
    if let Some((min, max, desired)) = saved.scheduled {
        // Only bounds this config's schedules can set (the file is input like any other).
        let mins: Vec<u32> = s.cfg.schedules.iter().filter_map(|x| x.min).chain([config.0]).collect();
        let maxes: Vec<u32> = s.cfg.schedules.iter().filter_map(|x| x.max).chain([config.1]).collect();
        if saved.config == config && min <= max && mins.contains(&min) && maxes.contains(&max) {
            s.cfg.min = min;
            s.cfg.max = max;
            s.desired = desired.clamp(min, max);
            sv.scheduled = Some((min, max, desired));
            let what = format!(
                "Restored the bounds of the last scheduled action: min {min}, max {max}, desired {}",
                s.desired
            );
            s.record(what, "saved before the restart".into(), "successful");
        } else {
            tracing::info!(group = %s.cfg.name, "the bounds of the last scheduled action are not restored: the configuration changed");
        }
    }
    let minute = saved.last_minute;
    sv.last = Some(saved);
    (sv, Some(minute))
}

impl Reconciler {
    /// Writes the loop's state when it is due (see the module doc); `stopping`: now, if changed.
    pub(super) async fn save_state(&mut self, stopping: bool) {
        let minute = self.policies.scheduler.last_minute();
        if let Some(sv) = self.saver.as_mut() {
            save(&self.handle, sv, minute, stopping).await;
        }
    }
}

async fn save(handle: &GroupHandle, sv: &mut Saver, last_minute: i64, stopping: bool) {
    let now = Saved {
        budget: handle.lock().budget.as_ref().map(|b| b.export()),
        last_minute,
        config: sv.config,
        scheduled: sv.scheduled,
    };
    let alerted = |s: &Saved| s.budget.as_ref().map(|b| (b.month, b.alerted.clone()));
    let urgent = sv.actions != sv.saved_actions
        || sv.last.as_ref().is_none_or(|l| alerted(l) != alerted(&now) || l.scheduled != now.scheduled);
    let changed = sv.last.as_ref() != Some(&now);
    let due = sv.written_at.is_none_or(|w| w.elapsed() >= SAVE_EVERY);
    // The scheduler's minute alone needs no write: minutes without an action replay harmlessly.
    let only_minute = sv.last.as_ref().is_some_and(|l| Saved { last_minute, ..l.clone() } == now);
    if !changed || !(urgent || stopping || (due && !only_minute)) {
        return;
    }
    let (path, data) = (sv.path.clone(), now.clone());
    let result = tokio::task::spawn_blocking(move || flotilla_watch::state_file::write(&path, &data)).await;
    sv.written_at = Some(Instant::now());
    match result {
        Ok(Ok(())) => {
            sv.last = Some(now);
            sv.saved_actions = sv.actions;
            sv.failing = false;
        }
        Ok(Err(e)) if !sv.failing => {
            sv.failing = true;
            tracing::warn!(file = %sv.path.display(), error = %e, "cannot save the group's state; retrying");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::GroupHandle;

    fn config(min: u32) -> flotilla_config::GroupConfig {
        let text = format!(
            r#"
[[routes]]
path = "/*"
target_group = "web"
[target_groups.web]
targets = []
[groups.web]
target_group = "web"
min = {min}
max = 6
policies = []
[groups.web.launch]
command = ["true"]
[groups.web.budget]
price_per_instance_hour = 1
monthly = 10
alerts = [50, 100]
hard_cap = true
[[groups.web.schedules]]
cron = "0 8 * * *"
min = 4
"#
        );
        let cfg = flotilla_config::parse(std::path::Path::new("t.toml"), &text, &|_| None).unwrap();
        cfg.groups["web"].clone()
    }

    fn handle(min: u32) -> std::sync::Arc<GroupHandle> {
        GroupHandle::new(config(min), crate::scope::Scope { deployment: "t".into(), node: None })
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("flf-{name}-{}", std::process::id())).join("web.state")
    }

    /// A group that ran a scheduled action and spent its budget, saved as it stops.
    async fn ran_and_saved(path: &std::path::Path) {
        let h = handle(1);
        let (mut sv, minute) = restore(&h, path.to_path_buf());
        assert_eq!(minute, None, "nothing saved yet");
        {
            let mut s = h.lock();
            s.cfg.min = 4;
            s.desired = 4;
            let b = s.budget.as_mut().unwrap();
            let mut saved = b.export();
            saved.spent = 10.5;
            saved.alerted = vec![50, 100];
            assert!(b.import(saved));
        }
        sv.scheduled = Some((4, 6, 4));
        sv.actions += 1;
        save(&h, &mut sv, 29_900_000, false).await;
        assert!(path.exists(), "an action is saved at once");
    }

    #[tokio::test]
    async fn a_restart_keeps_the_cap_the_alerts_and_the_scheduled_bounds() {
        let path = scratch("keep");
        let _ = std::fs::remove_file(&path);
        ran_and_saved(&path).await;
        let h = handle(1);
        let (_, minute) = restore(&h, path.clone());
        assert_eq!(minute, Some(29_900_000));
        let s = h.lock();
        assert_eq!((s.cfg.min, s.cfg.max, s.desired), (4, 6, 4));
        let b = s.budget.as_ref().unwrap();
        assert!(b.capped() && b.spent() >= 10.5);
        assert!(s.scale_out_blocked().is_some());
        assert!(s.activity.iter().any(|a| a.description.starts_with("Restored the bounds")));
        drop(s);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_changed_config_or_foreign_bounds_are_not_restored() {
        let path = scratch("changed");
        let _ = std::fs::remove_file(&path);
        ran_and_saved(&path).await;
        // min changed from 1 to 2 in the config: the config wins; the spend still counts.
        let h = handle(2);
        restore(&h, path.clone());
        assert_eq!(h.lock().cfg.min, 2);
        assert!(h.lock().budget.as_ref().unwrap().capped());
        // Bounds no schedule of this config can set are not taken from the file.
        let text = std::fs::read_to_string(&path).unwrap();
        let forged: Saved = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        flotilla_watch::state_file::write(&path, &Saved { scheduled: Some((5, 1000, 900)), ..forged }).unwrap();
        let h = handle(1);
        restore(&h, path.clone());
        let s = h.lock();
        assert_eq!((s.cfg.min, s.cfg.max), (1, 6));
        drop(s);
        // A damaged file: logged, set aside, the group starts as it would without one.
        std::fs::write(&path, "flotilla-state 1 00000000\n{not json").unwrap();
        let h = handle(1);
        let (_, minute) = restore(&h, path.clone());
        assert_eq!(minute, None);
        assert!(!h.lock().budget.as_ref().unwrap().capped());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn spend_alone_is_written_at_most_once_a_minute_and_when_stopping() {
        let path = scratch("rate");
        let _ = std::fs::remove_file(&path);
        let h = handle(1);
        let (mut sv, _) = restore(&h, path.clone());
        save(&h, &mut sv, 1, false).await;
        let first = std::fs::read_to_string(&path).unwrap();
        let bump = |h: &GroupHandle, to: f64| {
            let mut s = h.lock();
            let b = s.budget.as_mut().unwrap();
            let mut saved = b.export();
            saved.spent = to;
            b.import(saved);
        };
        bump(&h, 1.0);
        save(&h, &mut sv, 2, false).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "within the minute");
        save(&h, &mut sv, 2, true).await;
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"spent\":1.0"), "at stop");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
