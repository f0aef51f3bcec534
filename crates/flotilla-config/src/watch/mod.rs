//! `[watch]`, `[[alarms]]`, `[notifiers.*]`, `[[slos]]` and `[budget]`: the metrics store and what
//! watches it, read by flotilla-watch (and the fleet, for the budget).

pub(crate) mod model;
pub(crate) mod notifier;
#[cfg(test)]
mod notifier_tests;
pub(crate) mod raw;
pub(crate) mod validate;
mod validate_notifier;
