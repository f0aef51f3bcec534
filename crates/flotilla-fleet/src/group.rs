//! One auto scaling group: its shared state (read and changed by the admin API) and the
//! reconcile loop that launches, registers, watches, drains and stops instances to keep the
//! group at desired.
//!
//! By job: [`view`] is the shared state and what the API shows; [`reconciler`] is the loop (one
//! struct owning its state, a `select!` over a closed `Event`, one pass in a fixed order);
//! [`instances`] follows each instance (exits, placement, health, stops); [`scaling`] is where a
//! scaling decision is made (schedules, metrics, the [`crate::policy::Scaler`]); [`rollout`]
//! carries out an instance refresh; [`capacity`] launches and retires to desired;
//! [`coordinate`] is a swarm group's lease in a cluster; [`saved`] what survives a restart.

mod capacity;
mod coordinate;
mod instances;
mod reconciler;
mod rollout;
mod saved;
mod scaling;
mod view;

#[cfg(test)]
mod tests;

pub(crate) use reconciler::Reconciler;
pub use view::{Activity, GroupView, InstanceState, InstanceView, Role};
pub(crate) use view::{GroupHandle, Request};
