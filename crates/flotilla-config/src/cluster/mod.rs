//! `[cluster]`: several nodes sharing state through Redis, read by flotilla-cluster.

pub(crate) mod model;
pub(crate) mod raw;
pub(crate) mod validate;
