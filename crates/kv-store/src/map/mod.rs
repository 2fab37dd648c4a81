//! The ordered in-memory map from keys to values.
//!
//! Each key, its value and its revisions are encoded together as a *cell* (`cell.rs`). Cells
//! are packed in key order into *leaves* (`leaf.rs`) of up to [`LEAF_BYTES_MAX`] bytes, and
//! the leaves are indexed by a persistent B-tree (`imbl::OrdMap`) keyed by each leaf's lower
//! bound: leaf `i` holds the keys from its bound up to the next leaf's bound, and the first
//! leaf's bound is the empty key, so every key has exactly one leaf it belongs in.
//!
//! That keeps the per-key cost near the cell's own bytes: 1M keys of 16 bytes with 100-byte
//! values take 130 B each in leaves (the cell and its offset) and ~7.5 B each of leaf and index
//! overhead, where a heap block per cell and a B-tree of pointers to them took ~203
//! (`docs/benchmarks.md`, "Memory per key against Redis"). Reads are `O(log n)`: the index
//! finds the leaf, a binary search the cell. A reader takes a value out of the map by bumping
//! the leaf's reference count ([`KeyValue`]), so the map lock is held only for the lookup and
//! never while a value is copied or serialized.
//!
//! The index's nodes and the leaves are shared and copied on write, so [`KeyMap::clone`] is
//! `O(1)`: a snapshot takes a frozen copy of the whole map under the read lock in well under a
//! microsecond and serializes it with no lock held, while writers go on changing the live map.
//! A write to a leaf still shared (with a snapshot's copy or a reader's handle) copies that
//! leaf first (at most [`LEAF_BYTES_MAX`] and a cell), and the index's nodes on its path.
//!
//! A leaf splits when it grows past [`LEAF_BYTES_MAX`] (at its middle, or before the new cell
//! when that was appended at its end, so keys written in order fill their leaves), and merges
//! with a neighbour when it falls under a quarter of that and the two fit in one leaf.

mod cell;
mod leaf;

use std::ops::Bound;
use std::sync::Arc;

use self::cell::Layout;
pub(crate) use self::cell::Locator;
pub(crate) use self::cell::{from_v1 as cell_from_v1, is_well_formed as cell_is_well_formed};
pub use self::cell::{KeyMeta, KeyValue};
use self::leaf::Leaf;
use crate::value::Value;

/// A leaf splits when its cells add up to more than this: about a page, so a write to a leaf a
/// snapshot still shares copies little (as a forked process copies a page), while the index
/// holds one entry per ~30 small keys.
pub(crate) const LEAF_BYTES_MAX: usize = 4096;

/// A leaf merges with a neighbour when its cells add up to less than this.
const LEAF_BYTES_MIN: usize = LEAF_BYTES_MAX / 4;

// A leaf's offsets are `u32`: a leaf holds at most LEAF_BYTES_MAX and two cells, each at most
// one log record.
const _: () = assert!(LEAF_BYTES_MAX + 2 * kv_wal::frame::RECORD_BYTES_MAX < u32::MAX as usize);

/// What a put replaced: where the old value was written and its size (for the history link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replaced {
    pub locator: Locator,
    pub value_bytes: usize,
}

/// The map itself. Not synchronized: the store wraps it in a lock. Cloning is `O(1)` and
/// gives an independent map (see the module docs).
#[derive(Default, Clone)]
pub(crate) struct KeyMap {
    /// The leaves by their lower bound (the first one's is empty). No leaf is empty.
    leaves: imbl::OrdMap<Arc<[u8]>, Arc<Leaf>>,
    /// Cells held.
    len: usize,
    /// The sum of the cells' sizes: the live data, what a snapshot holds before compression.
    bytes: u64,
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMap")
            .field("len", &self.len())
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

impl KeyMap {
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (_, leaf) = self.leaves.get_prev(key)?;
        let index = leaf.search(key).ok()?;
        Some(KeyValue::in_leaf(Arc::clone(leaf), index))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.leaves
            .get_prev(key)
            .is_some_and(|(_, leaf)| leaf.search(key).is_ok())
    }

    /// Sets `key` to `value`, written at `locator`: a new key starts at version 1 created
    /// there; an existing one keeps its creation and counts one more version. Returns the
    /// key's new meta and what it replaced, if anything.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &Value,
        locator: Locator,
    ) -> (KeyMeta, Option<Replaced>) {
        let mut replaced = None;
        let mut meta = KeyMeta {
            version: 1,
            create_revision: locator.revision,
            mod_revision: locator.revision,
        };
        let Some((bound, leaf)) = self.leaves.get_prev_mut(key) else {
            let cell = cell::encode(key, value, meta, locator.op_index);
            self.add_leaf(Arc::from(&[][..]), Leaf::of_one(&cell));
            return (meta, None);
        };
        let bound = Arc::clone(bound);
        let leaf = Arc::make_mut(leaf);
        let appended = match leaf.search(key) {
            Ok(index) => {
                let old_cell = leaf.cell(index);
                let old = Layout::of(old_cell);
                replaced = Some(Replaced {
                    locator: old.locator(),
                    value_bytes: old_cell.len() - old.kind_at - 1,
                });
                meta.version = old.meta.version + 1;
                meta.create_revision = old.meta.create_revision;
                let cell = cell::encode(key, value, meta, locator.op_index);
                self.bytes -= old_cell.len() as u64;
                self.bytes += cell.len() as u64;
                leaf.replace(index, &cell);
                false
            }
            Err(index) => {
                let cell = cell::encode(key, value, meta, locator.op_index);
                self.bytes += cell.len() as u64;
                self.len += 1;
                leaf.insert(index, &cell);
                index + 1 == leaf.len()
            }
        };
        self.settle(bound, appended);
        (meta, replaced)
    }

    /// Puts a well-formed cell in (a snapshot's, read back), replacing the key's cell if any.
    pub fn insert(&mut self, new_cell: &[u8]) {
        debug_assert!(cell::is_well_formed(new_cell));
        let key = cell::key(new_cell);
        let Some((bound, leaf)) = self.leaves.get_prev_mut(key) else {
            self.add_leaf(Arc::from(&[][..]), Leaf::of_one(new_cell));
            return;
        };
        let bound = Arc::clone(bound);
        let leaf = Arc::make_mut(leaf);
        self.bytes += new_cell.len() as u64;
        let appended = match leaf.search(key) {
            Ok(index) => {
                self.bytes -= leaf.cell(index).len() as u64;
                leaf.replace(index, new_cell);
                false
            }
            Err(index) => {
                self.len += 1;
                leaf.insert(index, new_cell);
                index + 1 == leaf.len()
            }
        };
        self.settle(bound, appended);
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Some((bound, leaf)) = self.leaves.get_prev(key) else {
            return false;
        };
        let Ok(index) = leaf.search(key) else {
            return false;
        };
        let bound = Arc::clone(bound);
        let leaf = Arc::make_mut(self.leaves.get_mut(&bound[..]).expect("found above"));
        self.bytes -= leaf.cell(index).len() as u64;
        self.len -= 1;
        leaf.remove(index);
        self.settle(bound, false);
        true
    }

    /// Bytes of live data: the sum of every cell's size (key, value and a few bytes of length
    /// and revisions each).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = KeyValue> + '_ {
        self.leaves.values().flat_map(|leaf| {
            (0..leaf.len()).map(move |index| KeyValue::in_leaf(Arc::clone(leaf), index))
        })
    }

    /// Every cell, in key order (what a snapshot writes).
    pub fn cells(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.leaves
            .values()
            .flat_map(|leaf| (0..leaf.len()).map(move |index| leaf.cell(index)))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after` (when
    /// given), in key order.
    pub fn scan_prefix(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<KeyValue> {
        let (from, inclusive) = match after {
            Some(after) if after >= prefix => (after, false),
            _ => (prefix, true),
        };
        let Some((bound, leaf)) = self.leaves.get_prev(from) else {
            return Vec::new();
        };
        let first_index = match leaf.search(from) {
            Ok(index) if !inclusive => index + 1,
            Ok(index) | Err(index) => index,
        };
        let leaves = self
            .leaves
            .range::<_, [u8]>((Bound::Included(&bound[..]), Bound::Unbounded));
        leaves
            .enumerate()
            .flat_map(|(position, (_, leaf))| {
                let start = if position == 0 { first_index } else { 0 };
                (start..leaf.len()).map(move |index| (leaf, index))
            })
            .take_while(|(leaf, index)| leaf.key(*index).starts_with(prefix))
            .take(limit)
            .map(|(leaf, index)| KeyValue::in_leaf(Arc::clone(leaf), index))
            .collect()
    }

    fn add_leaf(&mut self, bound: Arc<[u8]>, leaf: Leaf) {
        self.len += leaf.len();
        self.bytes += leaf.bytes_len() as u64;
        self.leaves.insert(bound, Arc::new(leaf));
    }

    /// Restores the leaves' bounds after the leaf at `bound` changed: splits it when it grew
    /// too large (before its last cell when `appended`, so keys written in order leave full
    /// leaves behind; the halves are settled in turn), takes it out when empty, merges it with
    /// a neighbour when small.
    fn settle(&mut self, bound: Arc<[u8]>, appended: bool) {
        let leaf = self.leaves.get(&bound[..]).expect("the leaf that changed");
        let (cells, bytes) = (leaf.len(), leaf.bytes_len());
        if bytes > LEAF_BYTES_MAX && cells >= 2 {
            let leaf = Arc::make_mut(self.leaves.get_mut(&bound[..]).expect("present"));
            let at = if appended { cells - 1 } else { leaf.middle() };
            let right = leaf.split_off(at);
            let right_bound: Arc<[u8]> = Arc::from(right.key(0));
            self.leaves
                .insert(Arc::clone(&right_bound), Arc::new(right));
            // A half may still be too large (a cell larger than a leaf in it) or small.
            self.settle(bound, false);
            self.settle(right_bound, false);
        } else if cells == 0 {
            self.leaves.remove(&bound[..]);
            if bound.is_empty() {
                // The next leaf becomes the first: its bound is the empty key.
                if let Some((next_bound, _)) = self.leaves.get_min() {
                    let next_bound = Arc::clone(next_bound);
                    let next = self.leaves.remove(&next_bound[..]).expect("present");
                    self.leaves.insert(bound, next);
                }
            }
        } else if bytes < LEAF_BYTES_MIN {
            self.merge_small(bound, bytes);
        }
    }

    /// Merges the small leaf at `bound` (`bytes` long) into its next or previous neighbour,
    /// if the two fit in one leaf.
    fn merge_small(&mut self, bound: Arc<[u8]>, bytes: usize) {
        let fits = |leaf: &Arc<Leaf>| bytes + leaf.bytes_len() <= LEAF_BYTES_MAX;
        let next = self
            .leaves
            .range::<_, [u8]>((Bound::Excluded(&bound[..]), Bound::Unbounded))
            .next()
            .filter(|(_, leaf)| fits(leaf))
            .map(|(next_bound, _)| Arc::clone(next_bound));
        if let Some(next_bound) = next {
            let next = self.leaves.remove(&next_bound[..]).expect("present");
            let leaf = Arc::make_mut(self.leaves.get_mut(&bound[..]).expect("present"));
            leaf.append(&next);
            return;
        }
        let previous = self
            .leaves
            .range::<_, [u8]>((Bound::Unbounded, Bound::Excluded(&bound[..])))
            .next_back()
            .filter(|(_, leaf)| fits(leaf))
            .map(|(previous_bound, _)| Arc::clone(previous_bound));
        if let Some(previous_bound) = previous {
            let leaf = self.leaves.remove(&bound[..]).expect("present");
            let previous =
                Arc::make_mut(self.leaves.get_mut(&previous_bound[..]).expect("present"));
            previous.append(&leaf);
        }
    }

    /// Checks the map's invariants (tests): leaves non-empty, within their bounds, in order,
    /// not too large; the counts right.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut bounds = self.leaves.keys().peekable();
        if let Some(first) = bounds.peek() {
            assert!(first.is_empty(), "the first leaf's bound is the empty key");
        }
        let (mut len, mut bytes, mut previous_key): (usize, u64, Option<Vec<u8>>) = (0, 0, None);
        let leaves: Vec<_> = self.leaves.iter().collect();
        for (position, (bound, leaf)) in leaves.iter().enumerate() {
            assert!(leaf.len() > 0, "no leaf is empty");
            assert!(
                leaf.bytes_len() <= LEAF_BYTES_MAX || leaf.len() == 1,
                "a leaf over the limit holds one cell"
            );
            let next_bound = leaves.get(position + 1).map(|(bound, _)| bound);
            for index in 0..leaf.len() {
                let key = leaf.key(index);
                assert!(key >= &bound[..]);
                assert!(next_bound.is_none_or(|next| key < &next[..]));
                assert!(previous_key
                    .as_deref()
                    .is_none_or(|previous| previous < key));
                previous_key = Some(key.to_vec());
                bytes += leaf.cell(index).len() as u64;
            }
            len += leaf.len();
        }
        assert_eq!((len, bytes), (self.len, self.bytes));
    }

    /// How many leaves hold the keys (tests).
    #[cfg(test)]
    pub(crate) fn leaf_count(&self) -> usize {
        self.leaves.len()
    }
}

#[cfg(test)]
mod tests;
