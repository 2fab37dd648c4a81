//! The store's log entries and their versioned binary encoding.
//!
//! Every write to the store is one WAL record holding one [`LogEntry`]. This build writes
//! format version 2 and reads versions 1 and 2 (integers little-endian, fixed width):
//!
//! ```text
//! version 2:
//! entry   = [version u8 = 2][op u8][epoch u64][flags u8][request, if flags bit 0][body]
//! request = [timestamp_ms u64][form u8][client_id_len u32][client_id][request_id_len u32][request_id]
//! op 1 SET:    body = [key_len u32][key][kind u8][value bytes to the end]
//! op 2 DELETE: body = [key_len u32][key]
//! op 3 TXN:    body = [compare_count u32] compare* [success_count u32] txn_op* [failure_count u32] txn_op*
//! op 4 NOOP:   body = (none): a new leader's first entry in its epoch (replication)
//! compare = [key_len u32][key][target u8][relation u8] operand
//!           target 1 value: operand = [kind u8][len u32][bytes]; 2 version, 3 create_revision,
//!           4 mod_revision: operand = [u64]; relation 1 =, 2 !=, 3 <, 4 >
//! txn_op  = [1 put][key_len u32][key][kind u8][len u32][value] | [2 delete][key_len u32][key]
//!         | [3 get][key_len u32][key] | [4 range][prefix_len u32][prefix][limit u32]
//!
//! version 1 (still read):
//! SET:    [version u8 = 1][op u8 = 1][epoch u64 LE][key_len u32 LE][key bytes][kind u8][value bytes]
//! DELETE: [version u8 = 1][op u8 = 2][epoch u64 LE][key_len u32 LE][key bytes]
//! ```
//!
//! `kind` is 1 for a JSON value (stored as compact JSON text) and 2 for raw bytes. A SET's
//! value runs to the end of the record (the WAL frames records with their length). The
//! `request` part names an idempotent request (`dedup.rs`): the leader's clock when it was
//! written (for pruning by age, alike on every replica), the form of the request (opaque to
//! the store: the HTTP layer's), and the client's ids. A record that does not decode exactly
//! (unknown version, op, kind, target or relation, short fields, bytes left over) is rejected.

use crate::dedup::{RequestIds, RequestMeta};
use crate::encoding::Malformed;
use crate::encoding::{put_bytes, put_u64, Reader};
use crate::txn::{decode_txn, encode_txn, Txn};
pub use crate::value::{Value, ValueKind};

/// The entry format version this build writes (it also reads version 1).
pub const ENTRY_FORMAT_VERSION: u8 = 2;
/// The first entry format: SET and DELETE only, no request ids.
const ENTRY_FORMAT_V1: u8 = 1;
/// Bytes before the key in a version 1 entry: version, op, epoch, key length.
const V1_HEADER_BYTES: usize = 1 + 1 + 8 + 4;

const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_TXN: u8 = 3;
const OP_NOOP: u8 = 4;
const FLAG_REQUEST: u8 = 1;

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
    /// Evaluate the compares and run one branch, at one revision (see [`Txn`]).
    Txn(Txn),
    /// Changes nothing. A new leader writes one as the first entry of its epoch, so that it
    /// can count entries as committed from an entry of its own epoch on (Raft's "figure 8").
    Noop,
}

impl Op {
    /// The key a SET or DELETE changes (`None` for a transaction).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => Some(key),
            Op::Txn(_) | Op::Noop => None,
        }
    }

    /// The bytes of keys and values the op carries — what its entry's size grows with (a
    /// transaction's every key and value, compared, read or written).
    pub fn carried_bytes(&self) -> usize {
        match self {
            Op::Set { key, value } => key.len() + value.bytes.len(),
            Op::Delete { key } => key.len(),
            Op::Txn(txn) => txn.carried_bytes(),
            Op::Noop => 0,
        }
    }

    fn code(&self) -> u8 {
        match self {
            Op::Set { .. } => OP_SET,
            Op::Delete { .. } => OP_DELETE,
            Op::Txn(_) => OP_TXN,
            Op::Noop => OP_NOOP,
        }
    }

    /// Appends the op's body (everything after the header and request).
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Op::Set { key, value } => {
                put_bytes(out, key);
                out.push(value.kind.to_byte());
                out.extend_from_slice(&value.bytes);
            }
            Op::Delete { key } => put_bytes(out, key),
            Op::Txn(txn) => encode_txn(out, txn),
            Op::Noop => {}
        }
    }

    /// A stable 64-bit fingerprint of the op and the request's form: the same request sent
    /// again has the same one; another method, key, value or condition has another.
    pub fn fingerprint(&self, form: u8) -> u64 {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        crate::encoding::fnv1a64(&[&[form, self.code()], &body])
    }
}

/// One WAL record's worth of store change: the op, the epoch of the leader that wrote it and,
/// for an idempotent request, its ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogEntry {
    /// The writing leader's epoch.
    pub epoch: u64,
    /// The change.
    pub op: Op,
    /// The idempotent request this entry carries out, if any.
    pub request: Option<RequestMeta>,
}

impl LogEntry {
    /// An entry without a request id.
    pub fn new(epoch: u64, op: Op) -> LogEntry {
        LogEntry {
            epoch,
            op,
            request: None,
        }
    }

    /// Encodes the entry in format version [`ENTRY_FORMAT_VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        let value_bytes = match &self.op {
            Op::Set { value, .. } => value.bytes.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(64 + value_bytes);
        out.push(ENTRY_FORMAT_VERSION);
        out.push(self.op.code());
        put_u64(&mut out, self.epoch);
        match &self.request {
            None => out.push(0),
            Some(request) => {
                out.push(FLAG_REQUEST);
                put_u64(&mut out, request.timestamp_ms);
                out.push(request.ids.form);
                put_bytes(&mut out, request.ids.client_id.as_bytes());
                put_bytes(&mut out, request.ids.request_id.as_bytes());
            }
        }
        self.op.encode_body(&mut out);
        out
    }

    /// Decodes an entry of format version 1 or 2; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, Malformed> {
        match bytes.first() {
            None => Err("empty entry".into()),
            Some(&ENTRY_FORMAT_V1) => decode_v1(bytes),
            Some(&ENTRY_FORMAT_VERSION) => decode_v2(bytes),
            Some(version) => Err(format!(
                "entry format version {version} is not supported (this build reads 1 and {ENTRY_FORMAT_VERSION})"
            ).into()),
        }
    }
}

fn text(bytes: &[u8], what: &str) -> Result<String, Malformed> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Malformed::from(format!("{what} is not UTF-8")))
}

fn decode_v2(bytes: &[u8]) -> Result<LogEntry, Malformed> {
    let mut reader = Reader::new(&bytes[1..]);
    let op_byte = reader.u8("op")?;
    let epoch = reader.u64("epoch")?;
    let flags = reader.u8("flags")?;
    if flags & !FLAG_REQUEST != 0 {
        return Err(format!("unknown entry flags {flags:#x}").into());
    }
    let request = if flags & FLAG_REQUEST != 0 {
        let timestamp_ms = reader.u64("request timestamp")?;
        let form = reader.u8("request form")?;
        Some(RequestMeta {
            ids: RequestIds {
                client_id: text(reader.bytes("client id")?, "client id")?,
                request_id: text(reader.bytes("request id")?, "request id")?,
                form,
            },
            timestamp_ms,
        })
    } else {
        None
    };
    let op = match op_byte {
        OP_SET => {
            let key = reader.bytes("key")?.to_vec();
            let kind_byte = reader
                .u8("value kind")
                .map_err(|_| "SET entry has no value kind".to_owned())?;
            let kind = ValueKind::from_byte(kind_byte)
                .ok_or_else(|| Malformed::from(format!("unknown value kind {kind_byte}")))?;
            let value = reader.rest().to_vec();
            reader.take(value.len(), "value")?;
            Op::Set {
                key,
                value: Value { kind, bytes: value },
            }
        }
        OP_DELETE => Op::Delete {
            key: reader.bytes("key")?.to_vec(),
        },
        OP_TXN => Op::Txn(decode_txn(&mut reader)?),
        OP_NOOP => Op::Noop,
        other => return Err(format!("unknown op {other}").into()),
    };
    if !reader.is_empty() {
        return Err(format!("{} unexpected bytes after the entry", reader.rest().len()).into());
    }
    Ok(LogEntry { epoch, op, request })
}

fn decode_v1(bytes: &[u8]) -> Result<LogEntry, Malformed> {
    if bytes.len() < V1_HEADER_BYTES {
        return Err(format!(
            "entry of {} bytes is shorter than its {V1_HEADER_BYTES}-byte header",
            bytes.len()
        )
        .into());
    }
    let op_byte = bytes[1];
    if op_byte != OP_SET && op_byte != OP_DELETE {
        return Err(format!("unknown op {op_byte}").into());
    }
    let epoch = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[V1_HEADER_BYTES..];
    if rest.len() < key_len {
        return Err(format!(
            "key length {key_len} runs past the end of the entry ({} bytes left)",
            rest.len()
        )
        .into());
    }
    let (key, rest) = rest.split_at(key_len);
    let key = key.to_vec();
    let op = match op_byte {
        OP_SET => {
            let (&kind_byte, value) = rest
                .split_first()
                .ok_or_else(|| "SET entry has no value kind".to_owned())?;
            let kind = ValueKind::from_byte(kind_byte)
                .ok_or_else(|| Malformed::from(format!("unknown value kind {kind_byte}")))?;
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
            )
            .into())
        }
    };
    Ok(LogEntry::new(epoch, op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::{Compare, CompareTarget, Relation, TxnOp};

    fn set(key: &[u8], value: Value) -> Op {
        Op::Set {
            key: key.to_vec(),
            value,
        }
    }

    #[test]
    fn a_noop_encodes_to_the_documented_layout_and_nothing_may_follow_it() {
        let entry = LogEntry::new(9, Op::Noop);
        let bytes = entry.encode();
        assert_eq!(bytes, [2, 4, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
        assert_eq!(Op::Noop.key(), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LogEntry::decode(&longer).is_err());
        assert!(LogEntry::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn set_encodes_to_the_documented_layout() {
        let entry = LogEntry::new(7, set(b"ab", Value::json("1")));
        let bytes = entry.encode();
        assert_eq!(
            bytes,
            [2, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 1, b'1']
        );
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
    }

    #[test]
    fn delete_with_a_request_encodes_to_the_documented_layout() {
        let entry = LogEntry {
            epoch: 1,
            op: Op::Delete { key: b"k".to_vec() },
            request: Some(RequestMeta {
                ids: RequestIds {
                    client_id: "c".to_owned(),
                    request_id: "r".to_owned(),
                    form: 4,
                },
                timestamp_ms: 258,
            }),
        };
        let bytes = entry.encode();
        #[rustfmt::skip]
        assert_eq!(
            bytes,
            [2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1,
             2, 1, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, b'c', 1, 0, 0, 0, b'r',
             1, 0, 0, 0, b'k']
        );
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
    }

    #[test]
    fn version_1_records_still_decode() {
        let set_v1 = [
            1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 1, b'1',
        ];
        assert_eq!(
            LogEntry::decode(&set_v1),
            Ok(LogEntry::new(7, set(b"ab", Value::json("1"))))
        );
        let delete_v1 = [1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'k'];
        assert_eq!(
            LogEntry::decode(&delete_v1),
            Ok(LogEntry::new(1, Op::Delete { key: b"k".to_vec() }))
        );
        for len in 0..set_v1.len() - 1 {
            assert!(LogEntry::decode(&set_v1[..len]).is_err(), "prefix of {len}");
        }
        let mut delete_with_tail = delete_v1.to_vec();
        delete_with_tail.push(0);
        assert!(LogEntry::decode(&delete_with_tail).is_err());
    }

    fn a_transaction() -> Op {
        Op::Txn(Txn {
            compares: vec![
                Compare {
                    key: b"a".to_vec(),
                    relation: Relation::Equal,
                    target: CompareTarget::Value(Value::raw(vec![0, 1])),
                },
                Compare {
                    key: b"b".to_vec(),
                    relation: Relation::Less,
                    target: CompareTarget::Version(3),
                },
                Compare {
                    key: Vec::new(),
                    relation: Relation::Greater,
                    target: CompareTarget::CreateRevision(u64::MAX),
                },
                Compare {
                    key: b"d".to_vec(),
                    relation: Relation::NotEqual,
                    target: CompareTarget::ModRevision(9),
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: b"a".to_vec(),
                    value: Value::json("[1]"),
                },
                TxnOp::Delete { key: b"b".to_vec() },
            ],
            failure: vec![
                TxnOp::Get { key: b"a".to_vec() },
                TxnOp::Range {
                    prefix: b"p/".to_vec(),
                    limit: 10,
                },
            ],
        })
    }

    /// `carried_bytes` counts every key and value byte: the rest of an encoded entry is the
    /// fixed overhead of its header, lengths and operation codes.
    #[test]
    fn carried_bytes_are_the_entrys_size_but_its_fixed_overhead() {
        let big = Value::raw(vec![7; 100_000]);
        let cases = [
            (Op::Noop, 0),
            (set(b"key", big.clone()), 3 + 100_000),
            (Op::Delete { key: b"k".to_vec() }, 1),
            // Compares a (with 2 value bytes), b, "" and d: 5; puts a = [1]: 4; deletes b: 1;
            // gets a: 1; the range over p/: 2.
            (a_transaction(), 5 + 4 + 1 + 1 + 2),
        ];
        for (op, carried) in cases {
            assert_eq!(op.carried_bytes(), carried, "{op:?}");
            let encoded = LogEntry::new(1, op).encode().len();
            assert!(
                encoded >= carried && encoded - carried < 128,
                "encoded {encoded}, carried {carried}"
            );
        }
    }

    #[test]
    fn transactions_round_trip_and_every_truncation_is_rejected() {
        let entry = LogEntry::new(u64::MAX, a_transaction());
        let bytes = entry.encode();
        assert_eq!(LogEntry::decode(&bytes), Ok(entry));
        for len in 0..bytes.len() {
            assert!(LogEntry::decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut with_tail = bytes.clone();
        with_tail.push(0);
        assert!(LogEntry::decode(&with_tail).is_err());
    }

    #[test]
    fn raw_and_empty_values_round_trip() {
        for value in [Value::raw(vec![0, 255, 3]), Value::raw(Vec::new())] {
            let entry = LogEntry::new(u64::MAX, set(b"", value));
            assert_eq!(LogEntry::decode(&entry.encode()), Ok(entry));
        }
    }

    #[test]
    fn every_truncation_and_bad_tag_is_rejected() {
        let set = LogEntry::new(3, set(b"key", Value::raw(b"v".to_vec()))).encode();
        // Every prefix that cuts into the header, the key or the kind byte fails.
        for len in 0..set.len() - 1 {
            assert!(LogEntry::decode(&set[..len]).is_err(), "prefix of {len}");
        }
        let mut bad_version = set.clone();
        bad_version[0] = 3;
        assert!(LogEntry::decode(&bad_version)
            .unwrap_err()
            .to_string()
            .contains("version 3"));
        let mut bad_op = set.clone();
        bad_op[1] = 9;
        assert!(LogEntry::decode(&bad_op)
            .unwrap_err()
            .to_string()
            .contains("op 9"));
        let mut bad_flags = set.clone();
        bad_flags[10] = 0x80;
        assert!(LogEntry::decode(&bad_flags)
            .unwrap_err()
            .to_string()
            .contains("flags"));
        let mut bad_kind = set.clone();
        bad_kind[11 + 4 + 3] = 0;
        assert!(LogEntry::decode(&bad_kind)
            .unwrap_err()
            .to_string()
            .contains("kind 0"));
        let mut delete_with_tail = LogEntry::new(
            3,
            Op::Delete {
                key: b"key".to_vec(),
            },
        )
        .encode();
        delete_with_tail.push(0);
        assert!(LogEntry::decode(&delete_with_tail).is_err());
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let put = set(b"k", Value::json("1"));
        assert_eq!(put.fingerprint(1), put.fingerprint(1));
        assert_ne!(put.fingerprint(1), put.fingerprint(2));
        assert_ne!(
            put.fingerprint(1),
            set(b"k", Value::json("2")).fingerprint(1)
        );
        assert_ne!(
            put.fingerprint(1),
            set(b"k", Value::raw("1")).fingerprint(1)
        );
        assert_ne!(
            put.fingerprint(1),
            Op::Delete { key: b"k".to_vec() }.fingerprint(1)
        );
        assert_ne!(put.fingerprint(1), a_transaction().fingerprint(1));
    }
}
