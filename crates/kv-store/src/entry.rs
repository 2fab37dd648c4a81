//! The store's log entries and their versioned binary encoding.
//!
//! Every write to the store is one WAL record holding one [`LogEntry`]:
//!
//! ```text
//! SET:    [version u8 = 1][op u8 = 1][epoch u64 LE][key_len u32 LE][key bytes][kind u8][value bytes]
//! DELETE: [version u8 = 1][op u8 = 2][epoch u64 LE][key_len u32 LE][key bytes]
//! ```
//!
//! `kind` is 1 for a JSON value (stored as compact JSON text) and 2 for raw bytes. The value runs
//! to the end of the record (the WAL frames records with their length). A record that does not
//! decode exactly (unknown version, op or kind, short key, bytes after a DELETE) is rejected.

/// The only entry format version this build writes and reads.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// Bytes before the key: version, op, epoch, key length.
pub const ENTRY_HEADER_BYTES: usize = 1 + 1 + 8 + 4;

const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;
const KIND_JSON: u8 = 1;
const KIND_RAW: u8 = 2;

/// How a value's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Compact JSON text, as serde_json writes it.
    Json,
    /// Opaque bytes.
    Raw,
}

impl ValueKind {
    /// The byte stored for this kind in entries and in the map.
    pub fn to_byte(self) -> u8 {
        match self {
            ValueKind::Json => KIND_JSON,
            ValueKind::Raw => KIND_RAW,
        }
    }

    /// The kind stored as `byte`, if it is one.
    pub fn from_byte(byte: u8) -> Option<ValueKind> {
        match byte {
            KIND_JSON => Some(ValueKind::Json),
            KIND_RAW => Some(ValueKind::Raw),
            _ => None,
        }
    }
}

/// A value as the store keeps it: its kind and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value {
    /// How to read `bytes`.
    pub kind: ValueKind,
    /// The value itself (compact JSON text for [`ValueKind::Json`]).
    pub bytes: Vec<u8>,
}

impl Value {
    /// A JSON value from its (compact) JSON text. The store does not parse it.
    pub fn json(text: impl Into<Vec<u8>>) -> Value {
        Value {
            kind: ValueKind::Json,
            bytes: text.into(),
        }
    }

    /// A raw byte value.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Value {
        Value {
            kind: ValueKind::Raw,
            bytes: bytes.into(),
        }
    }
}

/// A change to the map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert or replace `key`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Value,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// The key the op changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// One WAL record's worth of store change: the op and the epoch of the leader that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogEntry {
    /// The writing leader's epoch.
    pub epoch: u64,
    /// The change.
    pub op: Op,
}

impl LogEntry {
    /// Encodes the entry in format version [`ENTRY_FORMAT_VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        let (op_byte, key, value) = match &self.op {
            Op::Set { key, value } => (OP_SET, key, Some(value)),
            Op::Delete { key } => (OP_DELETE, key, None),
        };
        let value_bytes = value.map_or(0, |value| 1 + value.bytes.len());
        let mut out = Vec::with_capacity(ENTRY_HEADER_BYTES + key.len() + value_bytes);
        out.push(ENTRY_FORMAT_VERSION);
        out.push(op_byte);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        let key_len = u32::try_from(key.len()).expect("keys are limited far below 4 GiB");
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.push(value.kind.to_byte());
            out.extend_from_slice(&value.bytes);
        }
        out
    }

    /// Decodes an entry; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, String> {
        if bytes.len() < ENTRY_HEADER_BYTES {
            return Err(format!(
                "entry of {} bytes is shorter than its {ENTRY_HEADER_BYTES}-byte header",
                bytes.len()
            ));
        }
        let version = bytes[0];
        if version != ENTRY_FORMAT_VERSION {
            return Err(format!(
                "entry format version {version} is not supported (this build reads {ENTRY_FORMAT_VERSION})"
            ));
        }
        let op_byte = bytes[1];
        if op_byte != OP_SET && op_byte != OP_DELETE {
            return Err(format!("unknown op {op_byte}"));
        }
        let epoch = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
        let key_len = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
        let rest = &bytes[ENTRY_HEADER_BYTES..];
        if rest.len() < key_len {
            return Err(format!(
                "key length {key_len} runs past the end of the entry ({} bytes left)",
                rest.len()
            ));
        }
        let (key, rest) = rest.split_at(key_len);
        let key = key.to_vec();
        let op = match op_byte {
            OP_SET => {
                let (&kind_byte, value) = rest
                    .split_first()
                    .ok_or_else(|| "SET entry has no value kind".to_owned())?;
                let kind = ValueKind::from_byte(kind_byte)
                    .ok_or_else(|| format!("unknown value kind {kind_byte}"))?;
                Op::Set {
                    key,
                    value: Value {
                        kind,
                        bytes: value.to_vec(),
                    },
                }
            }
            OP_DELETE if rest.is_empty() => Op::Delete { key },
            _ => {
                return Err(format!(
                    "DELETE entry has {} unexpected bytes after its key",
                    rest.len()
                ))
            }
        };
        Ok(LogEntry { epoch, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_encodes_to_the_documented_layout() {
        let entry = LogEntry {
            epoch: 7,
            op: Op::Set {
                key: b"ab".to_vec(),
                value: Value::json("1"),
            },
        };
        let bytes = entry.encode();
        assert_eq!(
            bytes,
            [1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 1, b'1']
        );
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
    }

    #[test]
    fn delete_encodes_to_the_documented_layout() {
        let entry = LogEntry {
            epoch: 1,
            op: Op::Delete { key: b"k".to_vec() },
        };
        let bytes = entry.encode();
        assert_eq!(bytes, [1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'k']);
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
    }

    #[test]
    fn raw_and_empty_values_round_trip() {
        for value in [Value::raw(vec![0, 255, 3]), Value::raw(Vec::new())] {
            let entry = LogEntry {
                epoch: u64::MAX,
                op: Op::Set {
                    key: Vec::new(),
                    value,
                },
            };
            assert_eq!(LogEntry::decode(&entry.encode()), Ok(entry));
        }
    }

    #[test]
    fn every_truncation_and_bad_tag_is_rejected() {
        let set = LogEntry {
            epoch: 3,
            op: Op::Set {
                key: b"key".to_vec(),
                value: Value::raw(b"v".to_vec()),
            },
        }
        .encode();
        // Every prefix that cuts into the header, the key or the kind byte fails.
        for len in 0..ENTRY_HEADER_BYTES + 3 + 1 {
            assert!(LogEntry::decode(&set[..len]).is_err(), "prefix of {len}");
        }
        let mut bad_version = set.clone();
        bad_version[0] = 2;
        assert!(LogEntry::decode(&bad_version)
            .unwrap_err()
            .contains("version 2"));
        let mut bad_op = set.clone();
        bad_op[1] = 9;
        assert!(LogEntry::decode(&bad_op).unwrap_err().contains("op 9"));
        let mut bad_kind = set.clone();
        bad_kind[ENTRY_HEADER_BYTES + 3] = 0;
        assert!(LogEntry::decode(&bad_kind).unwrap_err().contains("kind 0"));
        let mut delete_with_tail = LogEntry {
            epoch: 3,
            op: Op::Delete {
                key: b"key".to_vec(),
            },
        }
        .encode();
        delete_with_tail.push(0);
        assert!(LogEntry::decode(&delete_with_tail).is_err());
    }
}
