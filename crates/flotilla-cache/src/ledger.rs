//! The invalidation ledger: why an invalidation cannot be undone by a fill that was already
//! under way.
//!
//! A fill (an origin fetch, a 304 refresh, a background refresh, a disk write, a promotion from
//! disk to memory) takes the ledger's [`Generation`] before it starts, and inserts only through
//! [`Ledger::admit`]: if an invalidation recorded since then matches what it would insert, the
//! insert is dropped. Invalidations are recorded with [`Ledger::record`], which runs the
//! tier's own removal under the same lock an admission holds, so every insert either sees the
//! record or lands before the removal runs — there is no third order.
//!
//! The log is bounded: past `capacity` records the oldest are forgotten, and a fill that started
//! before the forgotten ones is dropped (it cannot prove nothing matched) — a miss, never a stale
//! hit.

use std::collections::VecDeque;
use std::sync::RwLock;

use crate::store::PathMatch;

/// A point in the ledger: how many invalidations had been recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Generation(pub(crate) u64);

/// What an invalidation removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Paths(Vec<PathMatch>),
    Tags(Vec<String>),
    /// Every variant of one primary key (after a successful unsafe request).
    Key(String),
}

impl Scope {
    /// Paths, or everything when one of them is `/*`.
    pub fn paths(paths: Vec<PathMatch>) -> Scope {
        if paths.iter().any(|p| *p == PathMatch::Prefix("/".into())) {
            Scope::All
        } else {
            Scope::Paths(paths)
        }
    }

    /// Does it remove an object stored under `primary` for `path` with `tags`?
    pub fn matches(&self, primary: &str, path: &str, tags: &[String]) -> bool {
        match self {
            Scope::All => true,
            Scope::Paths(paths) => paths.iter().any(|p| p.matches(path)),
            Scope::Tags(wanted) => tags.iter().any(|t| wanted.contains(t)),
            Scope::Key(k) => k == primary,
        }
    }
}

/// Records kept: enough for any fill to check against (a fill lasts seconds; this is thousands
/// of invalidations), small enough to bound (a key record is a short string).
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug)]
pub struct Ledger {
    state: RwLock<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    current: u64,
    /// The newest generation forgotten (0: none).
    floor: u64,
    records: VecDeque<(u64, Scope)>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Ledger {
    pub fn new(capacity: usize) -> Self {
        Self { state: RwLock::new(State::default()), capacity: capacity.max(1) }
    }

    /// Where a fill starts: what it inserts later is checked against what was recorded since.
    pub fn generation(&self) -> Generation {
        Generation(self.state.read().unwrap_or_else(|e| e.into_inner()).current)
    }

    /// Records `scope` and runs `apply` (the tier's removal) before any insert can be admitted
    /// again.
    pub fn record<R>(&self, scope: Scope, apply: impl FnOnce(Generation) -> R) -> (Generation, R) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.current += 1;
        let g = state.current;
        state.records.push_back((g, scope));
        while state.records.len() > self.capacity {
            if let Some((old, _)) = state.records.pop_front() {
                state.floor = old;
            }
        }
        let applied = apply(Generation(g));
        (Generation(g), applied)
    }

    /// Runs `insert` (given the generation it is admitted at) unless an invalidation recorded
    /// since `since` matches the object, or the log no longer reaches back to `since`.
    pub fn admit<R>(
        &self,
        since: Generation,
        primary: &str,
        path: &str,
        tags: &[String],
        insert: impl FnOnce(Generation) -> R,
    ) -> Option<R> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if since.0 < state.floor {
            return None;
        }
        let newer = state.records.iter().rev().take_while(|(g, _)| *g > since.0);
        if newer.clone().any(|(_, scope)| scope.matches(primary, path, tags)) {
            return None;
        }
        Some(insert(Generation(state.current)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_admitted_unless_something_recorded_since_matches() {
        let l = Ledger::new(8);
        let admit = |since, primary: &str, path: &str, tags: &[&str]| {
            let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            l.admit(since, primary, path, &tags, |g| g).is_some()
        };
        let g0 = l.generation();
        l.record(Scope::Paths(vec![PathMatch::parse("/img/*")]), |_| ());
        assert!(!admit(g0, "k1", "/img/a.png", &[]));
        assert!(admit(g0, "k2", "/page", &[]));
        assert!(admit(l.generation(), "k1", "/img/a.png", &[]), "a fill started after it is fine");
        let g1 = l.generation();
        l.record(Scope::Tags(vec!["t".into()]), |_| ());
        l.record(Scope::Key("k9".into()), |_| ());
        assert!(!admit(g1, "k3", "/x", &["u", "t"]));
        assert!(!admit(g1, "k9", "/y", &[]));
        assert!(admit(g1, "k8", "/y", &["u"]));
        let g2 = l.generation();
        let (g, applied) = l.record(Scope::All, |g| g);
        assert_eq!(g, applied);
        assert!(!admit(g2, "anything", "/", &[]));
        assert!(admit(g, "anything", "/", &[]));
    }

    #[test]
    fn a_fill_older_than_the_log_is_dropped() {
        let l = Ledger::new(3);
        let old = l.generation();
        for i in 0..3 {
            l.record(Scope::Key(format!("other{i}")), |_| ());
        }
        assert!(l.admit(old, "k", "/p", &[], |_| ()).is_some(), "the log still reaches back");
        l.record(Scope::Key("other3".into()), |_| ());
        assert!(l.admit(old, "k", "/p", &[], |_| ()).is_none(), "when in doubt, drop");
        assert!(l.admit(l.generation(), "k", "/p", &[], |_| ()).is_some());
    }
}
