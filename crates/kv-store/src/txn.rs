//! Transactions: etcd's model of compares, then the `success` or the `failure` list of
//! operations, carried whole in one log record and evaluated when that record is applied.
//!
//! Because the record is evaluated at apply time, in id order, against the map every replica
//! holds at that id, every replica reaches the same verdict and the same writes: a crash never
//! leaves half a transaction (the record is in the log whole or not at all), a follower never
//! shows half of one, and a reader never sees half of one (the whole record is applied under
//! one hold of the map's write lock). Compare-and-set is a transaction with one compare.
//!
//! Compares follow etcd: on `version`, `create_revision` and `mod_revision` a missing key
//! counts as 0; a compare on the `value` of a missing key is false whatever its relation. A
//! value is equal only to a value of the same kind and bytes; `<` and `>` order by the bytes
//! (compact JSON text or raw bytes).

use crate::encoding::Malformed;
use crate::encoding::{put_bytes, put_u32, put_u64, Reader};
use crate::map::KeyValue;
use crate::value::{Value, ValueKind};

/// Most compares a transaction may hold.
pub const TXN_COMPARES_MAX: usize = 128;
/// Most operations in each of a transaction's branches (etcd's `--max-txn-ops` default).
pub const TXN_OPS_MAX: usize = 128;
/// Largest `limit` of a range operation.
pub const RANGE_LIMIT_MAX: u32 = 10_000;
/// Most value bytes a transaction's ranges return between them (64 MiB, `/history`'s default
/// budget too): a range stops before the value that would pass it and reports `more`, so one
/// request cannot make the node hold its whole data set as an answer.
pub const RANGE_VALUE_BYTES_MAX: usize = 64 << 20;

/// A transaction: if every compare holds, the `success` operations run, else the `failure`
/// ones; all at one revision (the record's id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Txn {
    /// Conditions on the state before the transaction, all of which must hold.
    pub compares: Vec<Compare>,
    /// Run, in order, when every compare holds.
    pub success: Vec<TxnOp>,
    /// Run, in order, when a compare fails.
    pub failure: Vec<TxnOp>,
}

/// One condition on a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// How the key's current state relates to the operand.
    pub relation: Relation,
    /// What is compared, with the operand.
    pub target: CompareTarget,
}

/// What a compare looks at, and the operand it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompareTarget {
    /// The value (a missing key fails the compare).
    Value(Value),
    /// Writes since creation (0 when missing).
    Version(u64),
    /// The revision that created the key (0 when missing).
    CreateRevision(u64),
    /// The revision of the key's last write (0 when missing).
    ModRevision(u64),
}

/// `=`, `!=`, `<`, `>`: the key's state on the left, the operand on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// An operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxnOp {
    /// Sets the key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Value,
    },
    /// Removes the key (nothing happens when it is absent; the response says so).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Reads the key as the transaction sees it at this point.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Reads up to `limit` keys starting with `prefix`, in key order.
    Range {
        /// The prefix.
        prefix: Vec<u8>,
        /// Most keys returned.
        limit: u32,
    },
}

impl TxnOp {
    /// The key a write operation changes (`None` for reads).
    pub fn written_key(&self) -> Option<&[u8]> {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => Some(key),
            TxnOp::Get { .. } | TxnOp::Range { .. } => None,
        }
    }
}

/// Why a transaction is refused before it reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnInvalid {
    /// More compares or operations than allowed.
    #[error("{what}: {count} is more than the limit of {limit}")]
    TooLarge {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One branch writes the same key twice (etcd refuses this too).
    #[error("the {branch} branch writes the key {key:?} more than once")]
    DuplicateKey {
        /// `success` or `failure`.
        branch: &'static str,
        /// The key, lossily as text.
        key: String,
    },
    /// A range asks for more keys than allowed.
    #[error("a range limit of {limit} is more than the maximum of {RANGE_LIMIT_MAX}")]
    RangeLimit {
        /// The limit asked for.
        limit: u32,
    },
}

impl Txn {
    /// The bytes of keys, prefixes and values the transaction carries (see
    /// [`crate::Op::carried_bytes`]).
    pub fn carried_bytes(&self) -> usize {
        let compares = self.compares.iter().map(|compare| {
            compare.key.len()
                + match &compare.target {
                    CompareTarget::Value(value) => value.bytes.len(),
                    _ => 0,
                }
        });
        let ops = self.success.iter().chain(&self.failure).map(|op| match op {
            TxnOp::Put { key, value } => key.len() + value.bytes.len(),
            TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
            TxnOp::Range { prefix, .. } => prefix.len(),
        });
        compares.chain(ops).sum()
    }

    /// Checks the limits and that no branch writes a key twice.
    pub fn check(&self) -> Result<(), TxnInvalid> {
        let limits = [
            ("compares", self.compares.len(), TXN_COMPARES_MAX),
            ("success operations", self.success.len(), TXN_OPS_MAX),
            ("failure operations", self.failure.len(), TXN_OPS_MAX),
        ];
        for (what, count, limit) in limits {
            if count > limit {
                return Err(TxnInvalid::TooLarge { what, count, limit });
            }
        }
        for (branch, ops) in [("success", &self.success), ("failure", &self.failure)] {
            let mut written: Vec<&[u8]> = ops.iter().filter_map(TxnOp::written_key).collect();
            written.sort_unstable();
            if let Some(pair) = written.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(TxnInvalid::DuplicateKey {
                    branch,
                    key: String::from_utf8_lossy(pair[0]).into_owned(),
                });
            }
            for op in ops.iter() {
                if let TxnOp::Range { limit, .. } = op {
                    if *limit > RANGE_LIMIT_MAX {
                        return Err(TxnInvalid::RangeLimit { limit: *limit });
                    }
                }
            }
        }
        Ok(())
    }

    /// The branch that runs for a verdict.
    pub fn branch(&self, succeeded: bool) -> &[TxnOp] {
        if succeeded {
            &self.success
        } else {
            &self.failure
        }
    }

    /// The position of `branch[index]` in the record's operation list (success first, then
    /// failure): the `op_index` that, with the revision, names the value a put wrote.
    pub fn op_position(&self, succeeded: bool, index: usize) -> u32 {
        let offset = if succeeded { 0 } else { self.success.len() };
        (offset + index) as u32
    }

    /// The operation at `position` of the record's list (see [`Txn::op_position`]).
    pub fn op_at(&self, position: u32) -> Option<&TxnOp> {
        let position = position as usize;
        self.success
            .get(position)
            .or_else(|| self.failure.get(position.checked_sub(self.success.len())?))
    }
}

impl Compare {
    /// Whether the compare holds for the key's current cell (`None`: the key is absent).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            // etcd: comparing the value of a key that does not exist always fails.
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(value), Some(cell)) => {
                let ordering = cell.value_bytes().cmp(&value.bytes);
                if self.relation == Relation::Equal || self.relation == Relation::NotEqual {
                    let equal = ordering == Ordering::Equal && cell.value_kind() == value.kind;
                    return equal == (self.relation == Relation::Equal);
                }
                ordering
            }
            (CompareTarget::Version(operand), cell) => {
                cell.map_or(0, |cell| cell.version()).cmp(operand)
            }
            (CompareTarget::CreateRevision(operand), cell) => {
                cell.map_or(0, |cell| cell.create_revision()).cmp(operand)
            }
            (CompareTarget::ModRevision(operand), cell) => {
                cell.map_or(0, |cell| cell.mod_revision()).cmp(operand)
            }
        };
        match self.relation {
            Relation::Equal => ordering == Ordering::Equal,
            Relation::NotEqual => ordering != Ordering::Equal,
            Relation::Less => ordering == Ordering::Less,
            Relation::Greater => ordering == Ordering::Greater,
        }
    }
}

const TARGET_VALUE: u8 = 1;
const TARGET_VERSION: u8 = 2;
const TARGET_CREATE_REVISION: u8 = 3;
const TARGET_MOD_REVISION: u8 = 4;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_GET: u8 = 3;
const OP_RANGE: u8 = 4;

impl Relation {
    fn to_byte(self) -> u8 {
        match self {
            Relation::Equal => 1,
            Relation::NotEqual => 2,
            Relation::Less => 3,
            Relation::Greater => 4,
        }
    }
    fn from_byte(byte: u8) -> Option<Relation> {
        match byte {
            1 => Some(Relation::Equal),
            2 => Some(Relation::NotEqual),
            3 => Some(Relation::Less),
            4 => Some(Relation::Greater),
            _ => None,
        }
    }
}

/// Appends the transaction's encoding (the body of a TXN entry; layout in `entry.rs`).
pub(crate) fn encode_txn(out: &mut Vec<u8>, txn: &Txn) {
    put_u32(out, txn.compares.len() as u32);
    for compare in &txn.compares {
        put_bytes(out, &compare.key);
        let (target, number) = match &compare.target {
            CompareTarget::Value(_) => (TARGET_VALUE, 0),
            CompareTarget::Version(number) => (TARGET_VERSION, *number),
            CompareTarget::CreateRevision(number) => (TARGET_CREATE_REVISION, *number),
            CompareTarget::ModRevision(number) => (TARGET_MOD_REVISION, *number),
        };
        out.push(target);
        out.push(compare.relation.to_byte());
        match &compare.target {
            CompareTarget::Value(value) => {
                out.push(value.kind.to_byte());
                put_bytes(out, &value.bytes);
            }
            _ => put_u64(out, number),
        }
    }
    for ops in [&txn.success, &txn.failure] {
        put_u32(out, ops.len() as u32);
        for op in ops.iter() {
            match op {
                TxnOp::Put { key, value } => {
                    out.push(OP_PUT);
                    put_bytes(out, key);
                    out.push(value.kind.to_byte());
                    put_bytes(out, &value.bytes);
                }
                TxnOp::Delete { key } => {
                    out.push(OP_DELETE);
                    put_bytes(out, key);
                }
                TxnOp::Get { key } => {
                    out.push(OP_GET);
                    put_bytes(out, key);
                }
                TxnOp::Range { prefix, limit } => {
                    out.push(OP_RANGE);
                    put_bytes(out, prefix);
                    put_u32(out, *limit);
                }
            }
        }
    }
}

fn value_kind(reader: &mut Reader<'_>) -> Result<ValueKind, Malformed> {
    let byte = reader.u8("value kind")?;
    ValueKind::from_byte(byte).ok_or_else(|| Malformed::from(format!("unknown value kind {byte}")))
}

/// Reads a transaction encoded by [`encode_txn`].
pub(crate) fn decode_txn(reader: &mut Reader<'_>) -> Result<Txn, Malformed> {
    // Each compare takes at least 4 + 1 + 1 + 8 bytes, each op at least 1 + 4.
    let compare_count = reader.count("compare count", 14)?;
    let mut compares = Vec::with_capacity(compare_count);
    for _ in 0..compare_count {
        let key = reader.bytes("compare key")?.to_vec();
        let target = reader.u8("compare target")?;
        let relation_byte = reader.u8("compare relation")?;
        let relation = Relation::from_byte(relation_byte)
            .ok_or_else(|| Malformed::from(format!("unknown compare relation {relation_byte}")))?;
        let target = match target {
            TARGET_VALUE => {
                let kind = value_kind(reader)?;
                let bytes = reader.bytes("compare value")?.to_vec();
                CompareTarget::Value(Value { kind, bytes })
            }
            TARGET_VERSION => CompareTarget::Version(reader.u64("compare version")?),
            TARGET_CREATE_REVISION => {
                CompareTarget::CreateRevision(reader.u64("compare create revision")?)
            }
            TARGET_MOD_REVISION => CompareTarget::ModRevision(reader.u64("compare mod revision")?),
            other => return Err(format!("unknown compare target {other}").into()),
        };
        compares.push(Compare {
            key,
            relation,
            target,
        });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for branch in &mut branches {
        let count = reader.count("operation count", 5)?;
        branch.reserve(count);
        for _ in 0..count {
            let op = match reader.u8("operation")? {
                OP_PUT => {
                    let key = reader.bytes("put key")?.to_vec();
                    let kind = value_kind(reader)?;
                    let bytes = reader.bytes("put value")?.to_vec();
                    TxnOp::Put {
                        key,
                        value: Value { kind, bytes },
                    }
                }
                OP_DELETE => TxnOp::Delete {
                    key: reader.bytes("delete key")?.to_vec(),
                },
                OP_GET => TxnOp::Get {
                    key: reader.bytes("get key")?.to_vec(),
                },
                OP_RANGE => TxnOp::Range {
                    prefix: reader.bytes("range prefix")?.to_vec(),
                    limit: reader.u32("range limit")?,
                },
                other => return Err(format!("unknown transaction operation {other}").into()),
            };
            branch.push(op);
        }
    }
    let [success, failure] = branches;
    Ok(Txn {
        compares,
        success,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: Value::json("1"),
        }
    }

    #[test]
    fn duplicate_written_keys_in_one_branch_are_refused() {
        let mut txn = Txn {
            success: vec![put("a"), TxnOp::Get { key: "a".into() }, put("b")],
            failure: vec![put("a")],
            ..Txn::default()
        };
        assert_eq!(txn.check(), Ok(()));
        txn.success.push(TxnOp::Delete { key: "b".into() });
        assert!(matches!(
            txn.check(),
            Err(TxnInvalid::DuplicateKey {
                branch: "success",
                ..
            })
        ));
    }

    #[test]
    fn limits_are_checked() {
        let txn = Txn {
            success: (0..=TXN_OPS_MAX)
                .map(|index| put(&index.to_string()))
                .collect(),
            ..Txn::default()
        };
        assert!(matches!(txn.check(), Err(TxnInvalid::TooLarge { .. })));
        let txn = Txn {
            failure: vec![TxnOp::Range {
                prefix: Vec::new(),
                limit: RANGE_LIMIT_MAX + 1,
            }],
            ..Txn::default()
        };
        assert!(matches!(txn.check(), Err(TxnInvalid::RangeLimit { .. })));
    }

    #[test]
    fn op_positions_count_success_then_failure() {
        let txn = Txn {
            success: vec![put("a"), put("b")],
            failure: vec![put("c")],
            ..Txn::default()
        };
        assert_eq!(txn.op_position(true, 1), 1);
        assert_eq!(txn.op_position(false, 0), 2);
        assert_eq!(txn.op_at(2), Some(&put("c")));
        assert_eq!(txn.op_at(3), None);
    }
}
