//! The disk tier's in-memory index: what is stored where, found without touching the disk.
//!
//! Entries live in a slab (`slots`) so that the O(n) passes — sweeping an invalidation,
//! choosing what to evict — can walk it in short chunks, releasing the lock between them:
//! a slot index stays valid across chunks, where a hash map's iteration order does not.
//! Lookups go through `by_key`; an invalidation not yet swept is `pending`, and hides what
//! it matches from lookups until the sweep has removed it.

use std::collections::HashMap;

use http::header::HeaderName;

use crate::ledger::Scope;

/// What the index keeps per file: enough to find it, to invalidate it and to evict it.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub file: String,
    pub primary: String,
    pub secondary: String,
    pub vary: Vec<HeaderName>,
    pub host: String,
    pub path: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub last_access: u64,
    /// The ledger generation it was admitted at (0 for files found at start).
    pub generation: u64,
}

#[derive(Default)]
pub(super) struct Index {
    slots: Vec<Option<Meta>>,
    free: Vec<usize>,
    by_key: HashMap<(String, String), usize>,
    /// Per primary key: its Vary names and the secondary keys stored (lookups need the names
    /// to compute the secondary key, removals the secondaries, neither by scanning).
    primaries: HashMap<String, (Vec<HeaderName>, Vec<String>)>,
    /// Invalidations recorded but not yet swept, by generation: an older entry they match is
    /// gone for lookups already.
    pub pending: Vec<(u64, Scope)>,
    pub bytes: u64,
    pub tick: u64,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Slots to walk (some empty).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn slot(&self, i: usize) -> Option<&Meta> {
        self.slots.get(i)?.as_ref()
    }

    /// Adds `m`, returning what it replaced under the same key.
    pub fn add(&mut self, m: Meta) -> Option<Meta> {
        let k = (m.primary.clone(), m.secondary.clone());
        let old = self.take(&k);
        self.bytes += m.size;
        let p = self.primaries.entry(m.primary.clone()).or_insert_with(|| (m.vary.clone(), Vec::new()));
        p.0 = m.vary.clone();
        p.1.push(m.secondary.clone());
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(m);
                i
            }
            None => {
                self.slots.push(Some(m));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(k, slot);
        old
    }

    pub fn take_slot(&mut self, i: usize) -> Option<Meta> {
        let m = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.by_key.remove(&(m.primary.clone(), m.secondary.clone()));
        self.bytes -= m.size;
        if let Some(p) = self.primaries.get_mut(&m.primary) {
            p.1.retain(|s| *s != m.secondary);
            if p.1.is_empty() {
                self.primaries.remove(&m.primary);
            }
        }
        Some(m)
    }

    pub fn take(&mut self, k: &(String, String)) -> Option<Meta> {
        let i = *self.by_key.get(k)?;
        self.take_slot(i)
    }

    /// Takes every variant of `primary` out of the index.
    pub fn take_primary(&mut self, primary: &str) -> Vec<Meta> {
        let secondaries = self.primaries.get(primary).map(|p| p.1.clone()).unwrap_or_default();
        secondaries.into_iter().filter_map(|s| self.take(&(primary.to_string(), s))).collect()
    }

    /// The Vary names stored for `primary`.
    pub fn vary(&self, primary: &str) -> Option<&Vec<HeaderName>> {
        self.primaries.get(primary).map(|p| &p.0)
    }

    /// The entry for a key, unless a pending invalidation hides it; marks it used.
    pub fn touch(&mut self, k: &(String, String)) -> Option<&Meta> {
        let i = *self.by_key.get(k)?;
        self.tick += 1;
        let tick = self.tick;
        let hidden = self.slots[i].as_ref().is_some_and(|m| self.hidden(m));
        let m = self.slots[i].as_mut()?;
        if hidden {
            return None;
        }
        m.last_access = tick;
        Some(m)
    }

    /// Does an invalidation recorded after `m` was admitted, and not swept yet, match it?
    pub fn hidden(&self, m: &Meta) -> bool {
        self.pending.iter().any(|(g, scope)| m.generation < *g && scope.matches(&m.primary, &m.path, &m.tags))
    }
}
