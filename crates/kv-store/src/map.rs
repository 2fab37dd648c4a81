//! The ordered in-memory map from keys to values.
//!
//! Each key and its value live together in one reference-counted allocation
//! (`[key_len u32][key][kind u8][value]`), and the map is a persistent B-tree of those
//! (`imbl::OrdSet`), ordered by key. That keeps the per-entry overhead to one heap block plus
//! a pointer in a tree node, gives `O(log n)` point reads and ordered prefix scans, and lets a
//! reader take a value out of the map by bumping a reference count, so the map lock is held
//! only for the lookup and never while a value is copied or serialized.
//!
//! The tree's nodes are shared and copied on write, so [`KeyMap::clone`] is `O(1)`: a
//! snapshot takes a frozen copy of the whole map under the read lock in well under a
//! microsecond and serializes it with no lock held, while writers go on changing the live
//! map (their first change to a node still shared with the copy copies that node: about
//! 16 pointers per tree level).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use crate::entry::{Value, ValueKind};

const KEY_LEN_BYTES: usize = 4;

/// A key and its value, as stored in the map. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue(Arc<[u8]>);

impl KeyValue {
    fn new(key: &[u8], kind: ValueKind, value: &[u8]) -> KeyValue {
        let key_len = u32::try_from(key.len()).expect("keys are limited far below 4 GiB");
        let mut bytes = Vec::with_capacity(KEY_LEN_BYTES + key.len() + 1 + value.len());
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.push(kind.to_byte());
        bytes.extend_from_slice(value);
        KeyValue(Arc::from(bytes))
    }

    /// The whole cell: `[key_len u32][key][kind u8][value]` (what snapshots store).
    pub(crate) fn cell(&self) -> &[u8] {
        &self.0
    }

    /// A cell read back from a snapshot, if it is well formed.
    pub(crate) fn from_cell(cell: &[u8]) -> Option<KeyValue> {
        let key_len = u32::from_le_bytes(cell.get(..KEY_LEN_BYTES)?.try_into().ok()?) as usize;
        let kind = *cell.get(KEY_LEN_BYTES + key_len)?;
        crate::snapshot::valid_kind(kind).then(|| KeyValue(Arc::from(cell)))
    }

    fn key_len(&self) -> usize {
        u32::from_le_bytes(self.0[..KEY_LEN_BYTES].try_into().expect("4 bytes")) as usize
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.0[KEY_LEN_BYTES..KEY_LEN_BYTES + self.key_len()]
    }

    /// The value's kind.
    pub fn value_kind(&self) -> ValueKind {
        ValueKind::from_byte(self.0[KEY_LEN_BYTES + self.key_len()])
            .expect("the map only stores known kinds")
    }

    /// The value's bytes (compact JSON text for [`ValueKind::Json`]).
    pub fn value_bytes(&self) -> &[u8] {
        &self.0[KEY_LEN_BYTES + self.key_len() + 1..]
    }

    /// The value, copied out.
    pub fn to_value(&self) -> Value {
        Value {
            kind: self.value_kind(),
            bytes: self.value_bytes().to_vec(),
        }
    }
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("kind", &self.value_kind())
            .field("value_bytes", &self.value_bytes().len())
            .finish()
    }
}

/// A [`KeyValue`] ordered, compared and looked up by its key alone.
#[derive(Clone)]
struct ByKey(KeyValue);

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key() == other.0.key()
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &ByKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &ByKey) -> Ordering {
        self.0.key().cmp(other.0.key())
    }
}
// Consistent with `Ord` above: both order by the key bytes.
impl Borrow<[u8]> for ByKey {
    fn borrow(&self) -> &[u8] {
        self.0.key()
    }
}

/// The map itself. Not synchronized: the store wraps it in a lock. Cloning is `O(1)` and
/// gives an independent map (see the module docs).
#[derive(Default, Clone)]
pub(crate) struct KeyMap {
    entries: imbl::OrdSet<ByKey>,
    /// The sum of the cells' sizes: the live data, what a snapshot holds before compression.
    bytes: u64,
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMap").field("len", &self.len()).finish()
    }
}

impl KeyMap {
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.entries.get(key).map(|entry| entry.0.clone())
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.entries.contains(key)
    }

    pub fn set(&mut self, key: &[u8], kind: ValueKind, value: &[u8]) {
        self.insert(KeyValue::new(key, kind, value));
    }

    pub fn insert(&mut self, entry: KeyValue) {
        self.bytes += entry.cell().len() as u64;
        if let Some(old) = self.entries.insert(ByKey(entry)) {
            self.bytes -= old.0.cell().len() as u64;
        }
    }

    pub fn delete(&mut self, key: &[u8]) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.bytes -= old.0.cell().len() as u64;
                true
            }
            None => false,
        }
    }

    /// Bytes of live data: the sum of every cell's size (`[key_len u32][key][kind u8][value]`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyValue> {
        self.entries.iter().map(|entry| &entry.0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after` (when
    /// given), in key order.
    pub fn scan_prefix(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<KeyValue> {
        let lower = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.entries
            .range::<_, [u8]>((lower, Bound::Unbounded))
            .take_while(|entry| entry.0.key().starts_with(prefix))
            .take(limit)
            .map(|entry| entry.0.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[KeyValue]) -> Vec<&[u8]> {
        entries.iter().map(KeyValue::key).collect()
    }

    #[test]
    fn key_value_round_trips_its_parts() {
        let entry = KeyValue::new(b"key", ValueKind::Raw, &[0, 1, 2]);
        assert_eq!(entry.key(), b"key");
        assert_eq!(entry.value_kind(), ValueKind::Raw);
        assert_eq!(entry.value_bytes(), [0, 1, 2]);
        let empty = KeyValue::new(b"", ValueKind::Json, b"");
        assert_eq!(empty.key(), b"");
        assert_eq!(empty.value_bytes(), b"");
    }

    #[test]
    fn set_replaces_and_delete_removes() {
        let mut map = KeyMap::default();
        map.set(b"a", ValueKind::Json, b"1");
        map.set(b"a", ValueKind::Raw, b"2");
        assert_eq!(map.len(), 1);
        let entry = map.get(b"a").unwrap();
        assert_eq!(
            (entry.value_kind(), entry.value_bytes()),
            (ValueKind::Raw, &b"2"[..])
        );
        assert!(map.delete(b"a"));
        assert!(!map.delete(b"a"));
        assert!(map.get(b"a").is_none());
    }

    #[test]
    fn prefix_scan_is_ordered_bounded_and_exact() {
        let mut map = KeyMap::default();
        for key in ["b", "a/2", "a/1", "a", "a0", "ab", "c"] {
            map.set(key.as_bytes(), ValueKind::Json, b"0");
        }
        assert_eq!(
            keys(&map.scan_prefix(b"a", None, 100)),
            [&b"a"[..], b"a/1", b"a/2", b"a0", b"ab"]
        );
        assert_eq!(
            keys(&map.scan_prefix(b"a/", None, 100)),
            [&b"a/1"[..], b"a/2"]
        );
        assert_eq!(keys(&map.scan_prefix(b"a", None, 2)), [&b"a"[..], b"a/1"]);
        assert_eq!(
            keys(&map.scan_prefix(b"a", Some(b"a/1"), 2)),
            [&b"a/2"[..], b"a0"]
        );
        // A cursor before the prefix is ignored; one past the prefix ends the scan.
        assert_eq!(keys(&map.scan_prefix(b"b", Some(b"a"), 10)), [&b"b"[..]]);
        assert!(map.scan_prefix(b"a", Some(b"b"), 10).is_empty());
        assert_eq!(map.scan_prefix(b"", None, 100).len(), 7);
        assert!(map.scan_prefix(b"z", None, 100).is_empty());
    }

    /// A clone is a frozen copy: changes to either side never show in the other.
    #[test]
    fn a_clone_is_independent_of_later_changes() {
        let mut map = KeyMap::default();
        for index in 0..1_000u32 {
            map.set(index.to_string().as_bytes(), ValueKind::Json, b"1");
        }
        let frozen = map.clone();
        for index in 0..1_000u32 {
            if index % 3 == 0 {
                map.delete(index.to_string().as_bytes());
            } else {
                map.set(index.to_string().as_bytes(), ValueKind::Raw, b"2");
            }
        }
        map.set(b"new", ValueKind::Json, b"3");
        assert_eq!(frozen.len(), 1_000);
        assert!(frozen
            .iter()
            .all(|entry| entry.value_kind() == ValueKind::Json && entry.value_bytes() == b"1"));
        assert!(frozen.get(b"new").is_none());
        assert_eq!(map.len(), 1_000 - 334 + 1);
        let cells = |map: &KeyMap| {
            map.iter()
                .map(|entry| entry.cell().len() as u64)
                .sum::<u64>()
        };
        assert_eq!(map.bytes(), cells(&map));
        assert_eq!(frozen.bytes(), cells(&frozen));
        assert_eq!(map.get(b"1").unwrap().value_bytes(), b"2");
        let mut keys: Vec<&[u8]> = frozen.iter().map(KeyValue::key).collect();
        let in_order = keys.clone();
        keys.sort();
        assert_eq!(keys, in_order, "iteration is in key order");
    }
}
