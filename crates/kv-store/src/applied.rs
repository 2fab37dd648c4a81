//! The applied state and the one function that changes it: applying a log record.
//!
//! [`AppliedState`] is what the log builds — the keys with their versions and revisions, the
//! history links, the table of idempotent requests — and [`AppliedState::apply`] is the
//! deterministic step from one record to the next: the same record applied to the same state
//! gives the same state on every replica, at every replay. Everything here is computed from
//! the record and its id (its revision), never from a clock or from the node.

use crate::dedup::{DedupOptions, DedupTable, RequestMeta, RequestRecord};
use crate::entry::Op;
use crate::history::{History, HistoryOptions};
use crate::map::{KeyMap, Locator};
use crate::outcome::{FailedCompare, OpResponse, Outcome};
use crate::txn::{Txn, TxnOp, RANGE_VALUE_BYTES_MAX};

/// Retention settings the apply step follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOptions {
    /// History of replaced values.
    pub history: HistoryOptions,
    /// Idempotent requests remembered.
    pub dedup: DedupOptions,
}

/// The keys, their history and the requests applied, at one applied id. Cloning is `O(1)`
/// (persistent collections), which is how a snapshot takes its view.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppliedState {
    pub keys: KeyMap,
    pub history: History,
    pub requests: DedupTable,
}

impl AppliedState {
    /// Applies the record with id `revision`. Returns its outcome when `want_outcome` or when
    /// the record names a request (whose outcome the dedup table keeps); reads are evaluated
    /// only when the outcome is wanted.
    pub fn apply(
        &mut self,
        revision: u64,
        op: &Op,
        request: Option<&RequestMeta>,
        want_outcome: bool,
        options: &RetentionOptions,
    ) -> Option<Outcome> {
        let respond = want_outcome || request.is_some();
        let outcome = match op {
            Op::Set { key, value } => {
                let locator = Locator {
                    revision,
                    op_index: 0,
                };
                let (meta, replaced) = self.keys.put(key, value, locator);
                if let Some(replaced) = replaced {
                    self.history.link(locator, replaced);
                }
                respond.then(|| Outcome {
                    revision,
                    succeeded: true,
                    failed_compare: None,
                    responses: vec![OpResponse::Put {
                        key: key.clone(),
                        meta,
                    }],
                })
            }
            Op::Delete { key } => {
                let deleted = self.keys.delete(key);
                respond.then(|| Outcome {
                    revision,
                    succeeded: true,
                    failed_compare: None,
                    responses: vec![OpResponse::Delete {
                        key: key.clone(),
                        deleted,
                    }],
                })
            }
            Op::Txn(txn) => self.apply_txn(revision, txn, respond, want_outcome),
            Op::Noop => respond.then(|| Outcome {
                revision,
                succeeded: true,
                failed_compare: None,
                responses: Vec::new(),
            }),
        };
        self.history.prune(revision, &options.history);
        if let (Some(request), Some(outcome)) = (request, &outcome) {
            let record = RequestRecord {
                fingerprint: op.fingerprint(request.ids.form),
                form: request.ids.form,
                timestamp_ms: request.timestamp_ms,
                outcome: outcome.without_reads(),
            };
            self.requests.insert(&request.ids, record, &options.dedup);
        }
        outcome
    }

    /// Evaluates the compares against the state before the transaction, then runs the branch
    /// the verdict picks, in order (a read sees the branch's earlier writes, as in etcd).
    fn apply_txn(
        &mut self,
        revision: u64,
        txn: &Txn,
        respond: bool,
        evaluate_reads: bool,
    ) -> Option<Outcome> {
        let failed_compare = txn
            .compares
            .iter()
            .enumerate()
            .find_map(|(index, compare)| {
                let current = self.keys.get(&compare.key);
                (!compare.holds(current.as_ref())).then(|| FailedCompare {
                    index: index as u32,
                    key: compare.key.clone(),
                    current: current.map(|cell| cell.meta()),
                })
            });
        let succeeded = failed_compare.is_none();
        let mut responses = Vec::new();
        let mut range_bytes_left = RANGE_VALUE_BYTES_MAX;
        for (index, op) in txn.branch(succeeded).iter().enumerate() {
            let response = match op {
                TxnOp::Put { key, value } => {
                    let locator = Locator {
                        revision,
                        op_index: txn.op_position(succeeded, index),
                    };
                    let (meta, replaced) = self.keys.put(key, value, locator);
                    if let Some(replaced) = replaced {
                        self.history.link(locator, replaced);
                    }
                    OpResponse::Put {
                        key: key.clone(),
                        meta,
                    }
                }
                TxnOp::Delete { key } => OpResponse::Delete {
                    key: key.clone(),
                    deleted: self.keys.delete(key),
                },
                TxnOp::Get { .. } | TxnOp::Range { .. } if !evaluate_reads => OpResponse::Elided,
                TxnOp::Get { key } => OpResponse::Get {
                    key: key.clone(),
                    found: self.keys.get(key),
                },
                TxnOp::Range { prefix, limit } => {
                    range(&self.keys, prefix, *limit as usize, &mut range_bytes_left)
                }
            };
            if respond {
                responses.push(response);
            }
        }
        respond.then_some(Outcome {
            revision,
            succeeded,
            failed_compare,
            responses,
        })
    }
}

/// A range of a transaction: the first `limit` keys with `prefix`, stopped before the value
/// that would take the transaction's ranges past `bytes_left` (what is left of
/// [`RANGE_VALUE_BYTES_MAX`]); `more` when keys with the prefix were left out either way.
fn range(keys: &KeyMap, prefix: &[u8], limit: usize, bytes_left: &mut usize) -> OpResponse {
    let mut found = keys.scan_prefix(prefix, None, limit.saturating_add(1));
    let mut more = found.len() > limit;
    found.truncate(limit);
    let within = found
        .iter()
        .take_while(
            |cell| match bytes_left.checked_sub(cell.value_bytes().len()) {
                Some(left) => {
                    *bytes_left = left;
                    true
                }
                None => false,
            },
        )
        .count();
    if within < found.len() {
        found.truncate(within);
        more = true;
    }
    OpResponse::Range {
        prefix: prefix.to_vec(),
        found,
        more,
    }
}
