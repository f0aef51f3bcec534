//! `[fleet]` and `[groups.*]`: the fleet's settings and its auto scaling groups (launch template,
//! bounds, scaling policies, schedules, budgets), read by flotilla-fleet.

pub(crate) mod model;
pub(crate) mod policies;
pub(crate) mod raw;
pub(crate) mod validate;
