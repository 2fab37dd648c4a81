//! A *cell*: one key, its value and its revisions, encoded as the map and snapshots keep it,
//! and [`KeyValue`], a reader's handle on one.
//!
//! ```text
//! cell = key_len:varint key mod_revision:varint (mod_revision - create_revision):varint
//!        version:varint op_index:varint kind:u8 value
//! ```
//!
//! (LEB128 varints: a 16-byte key written once at revision 1,000,000 spends 7 bytes on its
//! length and revisions, 3 more than the `u32` key length alone did.) Snapshots store cells as
//! they are (`docs/store-format.md`).
//!
//! `mod_revision` is the id of the log record that wrote the value and `op_index` the position
//! of the write in that record (0 but in transactions): together they name where the value can
//! be read back from the log (the key's history, `history.rs`).

use std::sync::Arc;

use super::leaf::Leaf;
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

/// Encodes a cell.
pub(crate) fn encode(key: &[u8], value: &Value, meta: KeyMeta, op_index: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + value.bytes.len() + 16);
    put_varint(&mut bytes, key.len() as u64);
    bytes.extend_from_slice(key);
    put_varint(&mut bytes, meta.mod_revision);
    put_varint(&mut bytes, meta.mod_revision - meta.create_revision);
    put_varint(&mut bytes, meta.version);
    put_varint(&mut bytes, u64::from(op_index));
    bytes.push(value.kind.to_byte());
    bytes.extend_from_slice(&value.bytes);
    bytes
}

/// Whether `cell` is a well-formed cell (what a snapshot's cells are checked with).
pub(crate) fn is_well_formed(cell: &[u8]) -> bool {
    parse(cell).is_some()
}

/// A cell of snapshot format 1 (`[key_len u32][key][kind u8][value]`, no revisions) in
/// today's form, given the revisions of format 2: every key of such a snapshot counts as
/// created and last written at the snapshot's applied id, version 1.
pub(crate) fn from_v1(cell: &[u8], revision: u64) -> Option<Vec<u8>> {
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
    Some(encode(key, &value, meta, 0))
}

/// The key of a well-formed cell.
pub(crate) fn key(cell: &[u8]) -> &[u8] {
    let mut at = 0;
    let key_len = get_varint(cell, &mut at).expect("well-formed cell") as usize;
    &cell[at..at + key_len]
}

/// Where the parts of a cell are, decoded once.
pub(crate) struct Layout {
    pub meta: KeyMeta,
    pub op_index: u32,
    pub kind_at: usize,
}

impl Layout {
    /// The layout of a cell the map holds (always well formed).
    pub fn of(cell: &[u8]) -> Layout {
        parse(cell).expect("the map only holds well-formed cells")
    }

    /// Where the value was written.
    pub fn locator(&self) -> Locator {
        Locator {
            revision: self.meta.mod_revision,
            op_index: self.op_index,
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

/// A key and its value, as stored in the map: a handle on one cell of a leaf (`leaf.rs`).
/// Cloning is a reference-count increment; the map changes a leaf a reader still holds by
/// copying it, so a handle always reads the cell as it was when taken.
#[derive(Clone)]
pub struct KeyValue {
    leaf: Arc<Leaf>,
    index: u32,
}

impl KeyValue {
    /// The cell at `index` of `leaf`.
    pub(crate) fn in_leaf(leaf: Arc<Leaf>, index: usize) -> KeyValue {
        debug_assert!(index < leaf.len());
        let index = u32::try_from(index).expect("a leaf holds fewer than 2^32 cells");
        KeyValue { leaf, index }
    }

    /// A cell of its own, outside any map (tests).
    #[cfg(test)]
    pub(crate) fn new(key: &[u8], value: &Value, meta: KeyMeta, op_index: u32) -> KeyValue {
        let cell = encode(key, value, meta, op_index);
        KeyValue::in_leaf(Arc::new(Leaf::of_one(&cell)), 0)
    }

    /// The whole cell (what snapshots store).
    pub(crate) fn cell(&self) -> &[u8] {
        self.leaf.cell(self.index as usize)
    }

    fn layout(&self) -> Layout {
        Layout::of(self.cell())
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        key(self.cell())
    }

    /// The value's kind.
    pub fn value_kind(&self) -> ValueKind {
        ValueKind::from_byte(self.cell()[self.layout().kind_at])
            .expect("the map only stores known kinds")
    }

    /// The value's bytes (compact JSON text for [`ValueKind::Json`]).
    pub fn value_bytes(&self) -> &[u8] {
        &self.cell()[self.layout().kind_at + 1..]
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
        self.layout().locator()
    }
}

impl PartialEq for KeyValue {
    fn eq(&self, other: &KeyValue) -> bool {
        self.cell() == other.cell()
    }
}
impl Eq for KeyValue {}

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(is_well_formed(entry.cell()));
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
        let cell = encode(b"key", &Value::json("1"), KeyMeta::default(), 0);
        // Every cut before the kind byte leaves a cell that does not parse.
        for len in 0..cell.len() - 1 {
            assert!(!is_well_formed(&cell[..len]), "cut at {len}");
        }
        let mut bad_kind = cell.clone();
        let kind_at = cell.len() - 2;
        bad_kind[kind_at] = 9;
        assert!(!is_well_formed(&bad_kind));
        // A create revision above the mod revision does not parse either.
        let mut bad_create = Vec::new();
        put_varint(&mut bad_create, 1);
        bad_create.push(b'k');
        put_varint(&mut bad_create, 3);
        put_varint(&mut bad_create, 4);
        bad_create.extend_from_slice(&[1, 0, 1]);
        assert!(!is_well_formed(&bad_create));
    }

    #[test]
    fn a_format_1_cell_becomes_version_1_at_the_snapshot() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(&3u32.to_le_bytes());
        v1.extend_from_slice(b"key");
        v1.push(ValueKind::Raw.to_byte());
        v1.extend_from_slice(b"value");
        let cell = from_v1(&v1, 42).unwrap();
        let layout = Layout::of(&cell);
        assert_eq!(key(&cell), b"key");
        assert_eq!(&cell[layout.kind_at + 1..], b"value");
        assert_eq!(
            layout.meta,
            KeyMeta {
                version: 1,
                create_revision: 42,
                mod_revision: 42
            }
        );
        assert!(from_v1(&v1[..6], 42).is_none());
    }
}
