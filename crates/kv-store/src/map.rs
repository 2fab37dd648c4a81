//! The ordered in-memory map from keys to values.
//!
//! Each key and its value live together in one reference-counted allocation, a *cell*:
//!
//! ```text
//! cell = key_len:varint key mod_revision:varint (mod_revision - create_revision):varint
//!        version:varint op_index:varint kind:u8 value
//! ```
//!
//! (LEB128 varints: a 16-byte key written once at revision 1,000,000 spends 7 bytes on its
//! length and revisions, 3 more than the `u32` key length alone did.) The map is a persistent
//! B-tree of cells (`imbl::OrdSet`), ordered by key. That keeps the per-entry overhead to one
//! heap block plus a pointer in a tree node, gives `O(log n)` point reads and ordered prefix
//! scans, and lets a reader take a value out of the map by bumping a reference count, so the
//! map lock is held only for the lookup and never while a value is copied or serialized.
//!
//! `mod_revision` is the id of the log record that wrote the value and `op_index` the position
//! of the write in that record (0 but in transactions): together they name where the value can
//! be read back from the log (the key's history, `history.rs`).
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

use crate::encoding::{get_varint, put_varint};
use crate::value::{Value, ValueKind};

/// A key's place in the history of writes: its version (writes since creation, 1 for the
/// first) and the revisions (log ids) that created it and last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyMeta {
    /// Writes since the key was created (1 after the first; a delete ends the count).
    pub version: u64,
    /// The id of the record that created the key.
    pub create_revision: u64,
    /// The id of the record that wrote the current value.
    pub mod_revision: u64,
}

/// Where a value was written: the record's id and the write's position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Locator {
    pub revision: u64,
    pub op_index: u32,
}

/// A key and its value, as stored in the map. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue(Arc<[u8]>);

/// Where the parts of a cell are, decoded once.
struct Layout {
    meta: KeyMeta,
    op_index: u32,
    kind_at: usize,
}

impl KeyValue {
    pub(crate) fn new(key: &[u8], value: &Value, meta: KeyMeta, op_index: u32) -> KeyValue {
        let mut bytes = Vec::with_capacity(key.len() + value.bytes.len() + 16);
        put_varint(&mut bytes, key.len() as u64);
        bytes.extend_from_slice(key);
        put_varint(&mut bytes, meta.mod_revision);
        put_varint(&mut bytes, meta.mod_revision - meta.create_revision);
        put_varint(&mut bytes, meta.version);
        put_varint(&mut bytes, u64::from(op_index));
        bytes.push(value.kind.to_byte());
        bytes.extend_from_slice(&value.bytes);
        KeyValue(Arc::from(bytes))
    }

    /// The whole cell (what snapshots store).
    pub(crate) fn cell(&self) -> &[u8] {
        &self.0
    }

    /// A cell read back from a snapshot, if it is well formed.
    pub(crate) fn from_cell(cell: &[u8]) -> Option<KeyValue> {
        parse(cell)?;
        Some(KeyValue(Arc::from(cell)))
    }

    /// A cell of snapshot format 1 (`[key_len u32][key][kind u8][value]`, no revisions),
    /// given the revisions of format 2: every key of such a snapshot counts as created and
    /// last written at the snapshot's applied id, version 1.
    pub(crate) fn from_cell_v1(cell: &[u8], revision: u64) -> Option<KeyValue> {
        let key_len = u32::from_le_bytes(cell.get(..4)?.try_into().ok()?) as usize;
        let key = cell.get(4..4 + key_len)?;
        let kind = ValueKind::from_byte(*cell.get(4 + key_len)?)?;
        let value = Value {
            kind,
            bytes: cell[4 + key_len + 1..].to_vec(),
        };
        let meta = KeyMeta {
            version: 1,
            create_revision: revision,
            mod_revision: revision,
        };
        Some(KeyValue::new(key, &value, meta, 0))
    }

    fn layout(&self) -> Layout {
        parse(&self.0).expect("the map only holds well-formed cells")
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        let mut at = 0;
        let key_len = get_varint(&self.0, &mut at).expect("well-formed cell") as usize;
        &self.0[at..at + key_len]
    }

    /// The value's kind.
    pub fn value_kind(&self) -> ValueKind {
        ValueKind::from_byte(self.0[self.layout().kind_at])
            .expect("the map only stores known kinds")
    }

    /// The value's bytes (compact JSON text for [`ValueKind::Json`]).
    pub fn value_bytes(&self) -> &[u8] {
        &self.0[self.layout().kind_at + 1..]
    }

    /// The value, copied out.
    pub fn to_value(&self) -> Value {
        Value {
            kind: self.value_kind(),
            bytes: self.value_bytes().to_vec(),
        }
    }

    /// The key's version and revisions.
    pub fn meta(&self) -> KeyMeta {
        self.layout().meta
    }

    /// Writes since the key was created.
    pub fn version(&self) -> u64 {
        self.meta().version
    }

    /// The id of the record that created the key.
    pub fn create_revision(&self) -> u64 {
        self.meta().create_revision
    }

    /// The id of the record that wrote the current value.
    pub fn mod_revision(&self) -> u64 {
        self.meta().mod_revision
    }

    /// Where the current value was written.
    pub(crate) fn locator(&self) -> Locator {
        let layout = self.layout();
        Locator {
            revision: layout.meta.mod_revision,
            op_index: layout.op_index,
        }
    }
}

/// Decodes a cell's layout; `None` when it is not a well-formed cell.
fn parse(cell: &[u8]) -> Option<Layout> {
    let mut at = 0;
    let key_len = usize::try_from(get_varint(cell, &mut at)?).ok()?;
    at = at.checked_add(key_len).filter(|&end| end <= cell.len())?;
    let mod_revision = get_varint(cell, &mut at)?;
    let create_revision = mod_revision.checked_sub(get_varint(cell, &mut at)?)?;
    let version = get_varint(cell, &mut at)?;
    let op_index = u32::try_from(get_varint(cell, &mut at)?).ok()?;
    ValueKind::from_byte(*cell.get(at)?)?;
    Some(Layout {
        meta: KeyMeta {
            version,
            create_revision,
            mod_revision,
        },
        op_index,
        kind_at: at,
    })
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("kind", &self.value_kind())
            .field("value_bytes", &self.value_bytes().len())
            .field("meta", &self.meta())
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

    /// Sets `key` to `value`, written at `locator`: a new key starts at version 1 created
    /// there; an existing one keeps its creation and counts one more version. Returns the
    /// key's new meta and the cell replaced, if any.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &Value,
        locator: Locator,
    ) -> (KeyMeta, Option<KeyValue>) {
        let old = self.get(key);
        let meta = match &old {
            Some(old) => KeyMeta {
                version: old.version() + 1,
                create_revision: old.create_revision(),
                mod_revision: locator.revision,
            },
            None => KeyMeta {
                version: 1,
                create_revision: locator.revision,
                mod_revision: locator.revision,
            },
        };
        self.insert(KeyValue::new(key, value, meta, locator.op_index));
        (meta, old)
    }

    pub fn insert(&mut self, entry: KeyValue) {
        self.bytes += entry.cell().len() as u64;
        if let Some(old) = self.entries.insert(ByKey(entry)) {
            self.bytes -= old.0.cell().len() as u64;
        }
    }

    /// Removes `key`; returns its cell, if it was there.
    pub fn delete(&mut self, key: &[u8]) -> Option<KeyValue> {
        let old = self.entries.remove(key)?;
        self.bytes -= old.0.cell().len() as u64;
        Some(old.0)
    }

    /// Bytes of live data: the sum of every cell's size (key, value and a few bytes of length
    /// and revisions each).
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

    fn at(revision: u64) -> Locator {
        Locator {
            revision,
            op_index: 0,
        }
    }

    fn set(map: &mut KeyMap, key: &[u8], kind: ValueKind, value: &[u8], revision: u64) {
        let value = Value {
            kind,
            bytes: value.to_vec(),
        };
        map.put(key, &value, at(revision));
    }

    #[test]
    fn key_value_round_trips_its_parts() {
        let meta = KeyMeta {
            version: 300,
            create_revision: 5,
            mod_revision: 1 << 40,
        };
        let entry = KeyValue::new(b"key", &Value::raw(vec![0, 1, 2]), meta, 129);
        assert_eq!(entry.key(), b"key");
        assert_eq!(entry.value_kind(), ValueKind::Raw);
        assert_eq!(entry.value_bytes(), [0, 1, 2]);
        assert_eq!(entry.meta(), meta);
        assert_eq!(
            entry.locator(),
            Locator {
                revision: 1 << 40,
                op_index: 129
            }
        );
        assert_eq!(KeyValue::from_cell(entry.cell()), Some(entry.clone()));
        let empty = KeyValue::new(b"", &Value::json(""), KeyMeta::default(), 0);
        assert_eq!(empty.key(), b"");
        assert_eq!(empty.value_bytes(), b"");
        // 16-byte key, 100-byte value, written once at revision 1,000,000: 8 bytes of framing.
        let meta = KeyMeta {
            version: 1,
            create_revision: 1_000_000,
            mod_revision: 1_000_000,
        };
        let typical = KeyValue::new(&[b'k'; 16], &Value::raw(vec![7; 100]), meta, 0);
        assert_eq!(typical.cell().len(), 16 + 100 + 8);
    }

    #[test]
    fn cells_that_do_not_parse_are_refused() {
        let entry = KeyValue::new(b"key", &Value::json("1"), KeyMeta::default(), 0);
        let cell = entry.cell();
        // Every cut before the kind byte leaves a cell that does not parse.
        for len in 0..cell.len() - 1 {
            assert!(KeyValue::from_cell(&cell[..len]).is_none(), "cut at {len}");
        }
        let mut bad_kind = cell.to_vec();
        let kind_at = cell.len() - 2;
        bad_kind[kind_at] = 9;
        assert!(KeyValue::from_cell(&bad_kind).is_none());
        // A create revision above the mod revision does not parse either.
        let mut bad_create = Vec::new();
        put_varint(&mut bad_create, 1);
        bad_create.push(b'k');
        put_varint(&mut bad_create, 3);
        put_varint(&mut bad_create, 4);
        bad_create.extend_from_slice(&[1, 0, 1]);
        assert!(KeyValue::from_cell(&bad_create).is_none());
    }

    #[test]
    fn put_counts_versions_and_delete_ends_them() {
        let mut map = KeyMap::default();
        set(&mut map, b"a", ValueKind::Json, b"1", 3);
        set(&mut map, b"a", ValueKind::Raw, b"2", 7);
        assert_eq!(map.len(), 1);
        let entry = map.get(b"a").unwrap();
        assert_eq!(
            (entry.value_kind(), entry.value_bytes()),
            (ValueKind::Raw, &b"2"[..])
        );
        assert_eq!(
            entry.meta(),
            KeyMeta {
                version: 2,
                create_revision: 3,
                mod_revision: 7
            }
        );
        assert!(map.delete(b"a").is_some());
        assert!(map.delete(b"a").is_none());
        assert!(map.get(b"a").is_none());
        set(&mut map, b"a", ValueKind::Json, b"3", 9);
        assert_eq!(
            map.get(b"a").unwrap().meta(),
            KeyMeta {
                version: 1,
                create_revision: 9,
                mod_revision: 9
            }
        );
    }

    #[test]
    fn prefix_scan_is_ordered_bounded_and_exact() {
        let mut map = KeyMap::default();
        for key in ["b", "a/2", "a/1", "a", "a0", "ab", "c"] {
            set(&mut map, key.as_bytes(), ValueKind::Json, b"0", 1);
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
            set(
                &mut map,
                index.to_string().as_bytes(),
                ValueKind::Json,
                b"1",
                1,
            );
        }
        let frozen = map.clone();
        for index in 0..1_000u32 {
            if index % 3 == 0 {
                map.delete(index.to_string().as_bytes());
            } else {
                set(
                    &mut map,
                    index.to_string().as_bytes(),
                    ValueKind::Raw,
                    b"2",
                    2,
                );
            }
        }
        set(&mut map, b"new", ValueKind::Json, b"3", 3);
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
