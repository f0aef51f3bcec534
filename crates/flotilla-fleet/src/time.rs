//! Wall-clock helpers (shared with the watch; they live in flotilla-config, the bottom crate).

pub use flotilla_config::time::{days_in_month, month_of, rfc3339, secs_into_month};
