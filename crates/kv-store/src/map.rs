//! The ordered in-memory map from keys to values.
//!
//! Each key and its value live together in one reference-counted allocation
//! (`[key_len u32][key][kind u8][value]`), and the map is a `BTreeSet` of those, ordered by key.
//! That keeps the per-entry overhead to one heap block plus a 16-byte slot in a B-tree node,
//! gives `O(log n)` point reads and ordered prefix scans, and lets a reader take a value out
//! of the map by bumping a reference count, so the map lock is held only for the lookup and
//! never while a value is copied or serialized.
//!
//! A snapshot copies the map in chunks, letting writers in between, and still gets the map as
//! it was at one instant: [`KeyMap::start_capture`] marks the instant, and from then on every
//! change first saves the key's previous entry (its pre-image, or its absence) once;
//! [`KeyMap::copy_captured`] merges the live map with those pre-images chunk by chunk.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
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

/// The map itself. Not synchronized: the store wraps it in a lock.
#[derive(Default)]
pub(crate) struct KeyMap {
    entries: BTreeSet<ByKey>,
    /// The capture of a snapshot copying the map in chunks, if one is running.
    capture: Option<Capture>,
}

/// The map as it was when a capture started, for the keys changed since: `None` for a key that
/// was absent then.
struct Capture {
    id: u64,
    preimages: BTreeMap<Box<[u8]>, Option<KeyValue>>,
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
        self.remember(key);
        self.entries.replace(ByKey(KeyValue::new(key, kind, value)));
    }

    pub fn insert(&mut self, entry: KeyValue) {
        self.remember(entry.key());
        self.entries.replace(ByKey(entry));
    }

    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.remember(key);
        self.entries.remove(key)
    }

    /// Marks this instant as the one capture `id` copies (see [`KeyMap::copy_captured`]). One
    /// capture at a time: a running one is replaced.
    pub fn start_capture(&mut self, id: u64) {
        self.capture = Some(Capture {
            id,
            preimages: BTreeMap::new(),
        });
    }

    /// Ends capture `id` (nothing if another one, or none, is running) and drops its
    /// pre-images.
    pub fn end_capture(&mut self, id: u64) {
        if self
            .capture
            .as_ref()
            .is_some_and(|capture| capture.id == id)
        {
            self.capture = None;
        }
    }

    /// Appends to `out`, in key order, up to about `limit` entries with keys after `after`
    /// (from the start when `None`) as they were when capture `id` started. Returns the key to
    /// continue after, `Some(None)` when the copy is complete, and `None` when capture `id` is
    /// not running (the map was replaced since: copy again).
    pub fn copy_captured(
        &self,
        id: u64,
        after: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<KeyValue>,
    ) -> Option<Option<Vec<u8>>> {
        let capture = self.capture.as_ref().filter(|capture| capture.id == id)?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        // The live keys of this chunk decide where it ends; pre-images up to that key join
        // them, so a key deleted since the capture started still gets copied.
        let live: Vec<&ByKey> = self
            .entries
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(limit.max(1))
            .collect();
        let upper = match live.last() {
            Some(last) if live.len() == limit.max(1) => Bound::Included(last.0.key()),
            _ => Bound::Unbounded,
        };
        let mut preimages = capture
            .preimages
            .range::<[u8], _>((lower, upper))
            .peekable();
        let mut live = live.into_iter().peekable();
        loop {
            let take_preimage = match (live.peek(), preimages.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(entry), Some((key, _))) => key.as_ref() <= entry.0.key(),
            };
            if take_preimage {
                let (key, preimage) = preimages.next().expect("peeked");
                if live.peek().is_some_and(|entry| entry.0.key() == &**key) {
                    live.next();
                }
                out.extend(preimage.iter().cloned());
            } else {
                out.push(live.next().expect("peeked").0.clone());
            }
        }
        Some(match upper {
            Bound::Included(key) => Some(key.to_vec()),
            _ => None,
        })
    }

    /// Saves the entry of `key` before its first change under a running capture.
    fn remember(&mut self, key: &[u8]) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        if !capture.preimages.contains_key(key) {
            let before = self.entries.get(key).map(|entry| entry.0.clone());
            capture.preimages.insert(key.into(), before);
        }
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
            .range::<[u8], _>((lower, Bound::Unbounded))
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

    /// Chunked copies under a capture, with random changes between the chunks, give exactly the
    /// map as it was when the capture started.
    #[test]
    fn capture_copies_the_map_as_of_its_start() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("KVD_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(rand::random);
        println!("capture_copies_the_map_as_of_its_start seed={seed} (KVD_TEST_SEED)");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..300 {
            let key_space = rng.gen_range(1..40u32);
            let mut map = KeyMap::default();
            let random_op = |map: &mut KeyMap, rng: &mut rand::rngs::StdRng| {
                let key = format!("k{:02}", rng.gen_range(0..key_space));
                match rng.gen_range(0..3) {
                    0 => {
                        map.delete(key.as_bytes());
                    }
                    1 => map.insert(KeyValue::new(
                        key.as_bytes(),
                        ValueKind::Raw,
                        &rng.gen::<u32>().to_le_bytes(),
                    )),
                    _ => map.set(
                        key.as_bytes(),
                        ValueKind::Json,
                        rng.gen::<u16>().to_string().as_bytes(),
                    ),
                }
            };
            for _ in 0..rng.gen_range(0..60) {
                random_op(&mut map, &mut rng);
            }
            let expected: Vec<(Vec<u8>, Vec<u8>)> = map
                .scan_prefix(b"", None, usize::MAX)
                .iter()
                .map(|entry| (entry.key().to_vec(), entry.value_bytes().to_vec()))
                .collect();
            map.start_capture(round);
            let limit = rng.gen_range(1..8);
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                for _ in 0..rng.gen_range(0..6) {
                    random_op(&mut map, &mut rng);
                }
                match map
                    .copy_captured(round, after.as_deref(), limit, &mut out)
                    .expect("capture running")
                {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
            let copied: Vec<(Vec<u8>, Vec<u8>)> = out
                .iter()
                .map(|entry| (entry.key().to_vec(), entry.value_bytes().to_vec()))
                .collect();
            assert_eq!(copied, expected, "seed {seed} round {round} limit {limit}");
            map.end_capture(round);
            assert!(map.capture.is_none());
            assert!(map.copy_captured(round, None, limit, &mut out).is_none());
        }
    }
}
