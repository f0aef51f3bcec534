//! `[images]`: on-the-fly image variants, read by flotilla-edge (and flotilla-images).

pub(crate) mod model;
pub(crate) mod raw;
pub(crate) mod validate;
