//! The live side of an instance refresh: each tick asks [`crate::refresh::Refresh`] (pure) for
//! its next step and carries it out — drain a batch of old instances (capacity then launches
//! their replacements on the new template), finish, roll back to the previous template, or fail.

use std::net::SocketAddr;

use super::instances::pick_victims;
use super::view::{Instance, InstanceState};
use super::Reconciler;
use crate::refresh::{RefreshStatus, Step};

impl Reconciler {
    /// Advances a running instance refresh by one decision.
    pub(super) fn step_refresh(&self) {
        let mut s = self.handle.lock();
        let Some(mut r) = s.refresh.take() else { return };
        if !r.view.status.is_active() || s.stopping {
            s.refresh = Some(r);
            return;
        }
        let target = r.target;
        let old = s.outdated(target);
        let new_pending =
            s.live().filter(|i| i.view.launch_version == target && i.view.state != InstanceState::InService).count()
                as u32;
        let in_service = s.live().filter(|i| i.view.state == InstanceState::InService).count() as u32;
        let id = r.view.id;
        match r.step(old, new_pending, in_service, s.desired) {
            Step::Wait => {}
            Step::Replace(n) => {
                let live: Vec<&Instance> = s.live().filter(|i| i.view.launch_version != target).collect();
                let victims: Vec<(String, SocketAddr, u32)> = pick_victims(&live, n, &s.cfg.termination_policy)
                    .into_iter()
                    .map(|i| (i.view.id.clone(), i.view.addr, i.view.launch_version))
                    .collect();
                let tg = s.cfg.target_group.clone();
                for (vid, addr, v) in victims {
                    self.registrar.deregister(&tg, addr);
                    s.set_state(&vid, InstanceState::Draining);
                    s.record(
                        format!("Refresh {id}: replacing instance {vid} (launch template v{v} -> v{target})"),
                        format!("instance refresh, {} % complete", r.view.percent_complete),
                        "in_progress",
                    );
                }
            }
            Step::Done => {
                let (status, what) = if r.view.status == RefreshStatus::RollingBack {
                    (RefreshStatus::RolledBack, format!("rolled back to launch template v{target}"))
                } else {
                    (RefreshStatus::Successful, format!("every instance runs launch template v{target}"))
                };
                r.finish(status, None);
                s.record(format!("Refresh {id} finished"), what, "successful");
            }
            Step::RollBack => {
                let from = r.view.from_version;
                r.failures = 0;
                r.target = from;
                r.view.status = RefreshStatus::RollingBack;
                r.view.reason = Some(format!("new instances on launch template v{} failed", r.view.to_version));
                if let Some(t) = s.templates.get(&from).cloned() {
                    s.cfg.launch = t;
                }
                s.launch_version = from;
                s.record(
                    format!("Refresh {id}: rolling back to launch template v{from}"),
                    format!(
                        "new instances on launch template v{} failed to launch or to pass health checks",
                        r.view.to_version
                    ),
                    "failed",
                );
            }
            Step::Fail(reason) => {
                s.record(format!("Refresh {id} failed"), reason.clone(), "failed");
                r.finish(RefreshStatus::Failed, Some(reason));
            }
        }
        s.refresh = Some(r);
    }
}
