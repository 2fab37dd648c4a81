//! What applying a record decided: the transaction's verdict, the revision, and one response
//! per operation that ran. Computed at apply time — the only time the answer is certain — and
//! handed to the submitter (an [`OutcomeSlot`] it registered) and, for a request with an
//! idempotency id, kept in the dedup table (reads elided) so a retry gets the same answer.

use std::sync::{Arc, Mutex};

use crate::encoding::Malformed;
use crate::encoding::{put_bytes, put_u32, put_u64, Reader};
use crate::map::{KeyMeta, KeyValue};

/// The result of applying one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The record's id: the store's revision once it is applied.
    pub revision: u64,
    /// Whether every compare held (always true for a plain SET or DELETE).
    pub succeeded: bool,
    /// The first compare that failed, when one did.
    pub failed_compare: Option<FailedCompare>,
    /// One response per operation of the branch that ran, in order (a plain SET or DELETE
    /// has one).
    pub responses: Vec<OpResponse>,
}

/// The compare that decided a failed transaction, with the state of its key then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCompare {
    /// Its position among the compares.
    pub index: u32,
    /// Its key.
    pub key: Vec<u8>,
    /// The key's version and revisions before the transaction (`None`: absent).
    pub current: Option<KeyMeta>,
}

/// What one operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// A put: the key's version and revisions after it.
    Put {
        /// The key.
        key: Vec<u8>,
        /// After the put.
        meta: KeyMeta,
    },
    /// A delete: whether the key was there.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// Whether a value was removed.
        deleted: bool,
    },
    /// A get: the key's cell as the transaction saw it.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Its value and meta, if present.
        found: Option<KeyValue>,
    },
    /// A range: the cells found, in key order.
    Range {
        /// The prefix.
        prefix: Vec<u8>,
        /// Up to the limit.
        found: Vec<KeyValue>,
        /// Whether more keys with the prefix exist past the limit.
        more: bool,
    },
    /// A read whose result the dedup table does not keep (a replayed answer).
    Elided,
}

impl Outcome {
    /// The outcome with the results of reads dropped, as the dedup table keeps it.
    pub fn without_reads(&self) -> Outcome {
        Outcome {
            responses: self
                .responses
                .iter()
                .map(|response| match response {
                    OpResponse::Get { .. } | OpResponse::Range { .. } => OpResponse::Elided,
                    other => other.clone(),
                })
                .collect(),
            ..self.clone()
        }
    }

    /// Encodes a read-free outcome (the dedup table's; reads are written as elided).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.revision);
        out.push(u8::from(self.succeeded));
        match &self.failed_compare {
            None => out.push(0),
            Some(failed) => {
                out.push(1);
                put_u32(out, failed.index);
                put_bytes(out, &failed.key);
                put_meta(out, failed.current);
            }
        }
        put_u32(out, self.responses.len() as u32);
        for response in &self.responses {
            match response {
                OpResponse::Put { key, meta } => {
                    out.push(1);
                    put_bytes(out, key);
                    put_meta(out, Some(*meta));
                }
                OpResponse::Delete { key, deleted } => {
                    out.push(2);
                    put_bytes(out, key);
                    out.push(u8::from(*deleted));
                }
                OpResponse::Get { .. } | OpResponse::Range { .. } | OpResponse::Elided => {
                    out.push(3)
                }
            }
        }
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Outcome, Malformed> {
        let revision = reader.u64("outcome revision")?;
        let succeeded = reader.u8("outcome verdict")? != 0;
        let failed_compare = match reader.u8("failed compare flag")? {
            0 => None,
            _ => Some(FailedCompare {
                index: reader.u32("failed compare index")?,
                key: reader.bytes("failed compare key")?.to_vec(),
                current: get_meta(reader)?,
            }),
        };
        let count = reader.count("response count", 1)?;
        let mut responses = Vec::with_capacity(count);
        for _ in 0..count {
            responses.push(match reader.u8("response kind")? {
                1 => {
                    let key = reader.bytes("put key")?.to_vec();
                    let meta = get_meta(reader)?.ok_or("put response without meta")?;
                    OpResponse::Put { key, meta }
                }
                2 => OpResponse::Delete {
                    key: reader.bytes("delete key")?.to_vec(),
                    deleted: reader.u8("deleted")? != 0,
                },
                3 => OpResponse::Elided,
                other => return Err(format!("unknown response kind {other}").into()),
            });
        }
        Ok(Outcome {
            revision,
            succeeded,
            failed_compare,
            responses,
        })
    }
}

fn put_meta(out: &mut Vec<u8>, meta: Option<KeyMeta>) {
    match meta {
        None => out.push(0),
        Some(meta) => {
            out.push(1);
            put_u64(out, meta.version);
            put_u64(out, meta.create_revision);
            put_u64(out, meta.mod_revision);
        }
    }
}

fn get_meta(reader: &mut Reader<'_>) -> Result<Option<KeyMeta>, Malformed> {
    Ok(match reader.u8("meta flag")? {
        0 => None,
        _ => Some(KeyMeta {
            version: reader.u64("version")?,
            create_revision: reader.u64("create revision")?,
            mod_revision: reader.u64("mod revision")?,
        }),
    })
}

/// Where the apply step leaves a record's outcome for the submitter that asked for it. The
/// submitter holds one end; the pending queue holds the other until the record is applied
/// (then filled) or dropped (a cut log: never filled).
#[derive(Debug, Clone, Default)]
pub struct OutcomeSlot(Arc<Mutex<Option<Outcome>>>);

impl OutcomeSlot {
    /// The outcome, once the record is applied.
    pub fn get(&self) -> Option<Outcome> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn fill(&self, outcome: Outcome) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
    }

    /// A slot already holding `outcome`.
    pub(crate) fn filled(outcome: Outcome) -> OutcomeSlot {
        OutcomeSlot(Arc::new(Mutex::new(Some(outcome))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_free_outcomes_round_trip() {
        let meta = KeyMeta {
            version: 2,
            create_revision: 3,
            mod_revision: 9,
        };
        let outcome = Outcome {
            revision: 9,
            succeeded: false,
            failed_compare: Some(FailedCompare {
                index: 1,
                key: b"k".to_vec(),
                current: Some(meta),
            }),
            responses: vec![
                OpResponse::Put {
                    key: b"a".to_vec(),
                    meta,
                },
                OpResponse::Delete {
                    key: b"b".to_vec(),
                    deleted: true,
                },
                OpResponse::Range {
                    prefix: Vec::new(),
                    found: Vec::new(),
                    more: false,
                },
            ],
        };
        let mut bytes = Vec::new();
        outcome.encode(&mut bytes);
        let mut reader = Reader::new(&bytes);
        assert_eq!(
            Outcome::decode(&mut reader).unwrap(),
            outcome.without_reads()
        );
        assert!(reader.is_empty());
        for cut in 0..bytes.len() {
            assert!(Outcome::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
