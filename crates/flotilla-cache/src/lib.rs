//! Flotilla's HTTP cache semantics (RFC 9111, RFC 9213, RFC 5861) and storage, with no sockets:
//! the edge asks this crate whether a response may be stored, how long it stays fresh, what a
//! request may do with a stored copy, under which key it lives, and stores it.
//!
//! - [`directives`]: Cache-Control / CDN-Cache-Control parsing.
//! - [`storable`]: may a shared cache store this response?
//! - [`freshness`]: lifetime (with behaviour clamps), age, and the fresh/stale/revalidate decision.
//! - [`key`]: primary keys from a behaviour's key policy, Vary secondary keys, Accept-Encoding.
//! - [`conditional`], [`range`]: conditional requests and ranges against a representation's
//!   validators (shared by stored entries and `files:` origins).
//! - [`credentials`]: which requests speak for someone, and what may be shared with others.
//! - [`ledger`]: invalidations by generation, so a fill under way cannot undo one.
//! - [`store`], [`disk`]: the memory and disk tiers.

pub mod compress;
pub mod conditional;
pub mod credentials;
pub mod directives;
pub mod disk;
pub mod freshness;
pub mod key;
pub mod ledger;
pub mod range;
pub mod storable;
pub mod store;

pub use credentials::OtherCookies;
pub use directives::CacheControl;
pub use disk::DiskStore;
pub use freshness::{Behavior, Decision, Freshness, Timing};
pub use key::{Encoding, KeyPolicy, QueryKey};
pub use ledger::{Generation, Ledger, Scope};
pub use storable::NotStored;
pub use store::{Entry, Lookup, MemoryStore, PathMatch};
