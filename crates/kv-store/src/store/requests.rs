//! Idempotent requests at the store: a retried `(client_id, request_id)` is refused with the
//! first submission's outcome (pending or applied), and what the dedup table holds.

use super::*;
use crate::dedup::{DedupStats, RequestRecord};

impl Store {
    /// Fails when `ids` were submitted before: with [`Error::DuplicateRequest`] when the op is
    /// the same (its first id; its outcome slot, filled once applied), else with
    /// [`Error::RequestMismatch`].
    pub(super) fn refuse_repeated_request(
        &self,
        pending: &mut VecDeque<(u64, PendingOp)>,
        ids: &RequestIds,
        op: &Op,
    ) -> Result<()> {
        let fingerprint = op.fingerprint(ids.form);
        let earlier = pending
            .iter_mut()
            .rev()
            .find(|(_, pending)| is_request(pending, ids));
        let (id, same, outcome) = match earlier {
            Some((id, pending)) => {
                let request = pending.request.as_ref().expect("matched a request");
                let same = pending.op.fingerprint(request.ids.form) == fingerprint;
                let slot = pending.outcome.get_or_insert_with(OutcomeSlot::default);
                (*id, same, slot.clone())
            }
            None => {
                let map = read(&self.map);
                let Some(record) = map.requests.get(&ids.client_id, &ids.request_id) else {
                    return Ok(());
                };
                let outcome = OutcomeSlot::filled(record.outcome.clone());
                (
                    record.outcome.revision,
                    record.fingerprint == fingerprint,
                    outcome,
                )
            }
        };
        if same {
            self.requests_seen
                .duplicates
                .fetch_add(1, Ordering::Relaxed);
            Err(Error::DuplicateRequest { id, outcome })
        } else {
            self.requests_seen
                .mismatches
                .fetch_add(1, Ordering::Relaxed);
            Err(Error::RequestMismatch { id })
        }
    }

    /// Whether `ids` were submitted before — pending, or remembered by the dedup table: a
    /// retry, which [`Store::submit`] answers with the first submission's outcome.
    pub fn is_repeated_request(&self, ids: &RequestIds) -> bool {
        let pending = lock(&self.pending);
        pending.iter().any(|(_, pending)| is_request(pending, ids))
            || read(&self.map)
                .requests
                .get(&ids.client_id, &ids.request_id)
                .is_some()
    }

    /// What the dedup table remembers of `(client_id, request_id)`, if anything.
    pub fn request_record(&self, client_id: &str, request_id: &str) -> Option<RequestRecord> {
        self.applied_state()
            .requests
            .get(client_id, request_id)
            .cloned()
    }

    /// Counts about the dedup table.
    pub fn dedup_stats(&self) -> DedupStats {
        let state = self.applied_state();
        let table = &state.requests;
        let mut request_ids = std::collections::HashSet::new();
        let mut clients = std::collections::HashSet::new();
        for ((client_id, request_id), _) in table.iter() {
            request_ids.insert(request_id.as_str());
            clients.insert(client_id.as_str());
        }
        let counters = self.request_counters();
        DedupStats {
            entries: table.len(),
            unique_request_ids: request_ids.len(),
            clients: clients.len(),
            inserted: table.inserted,
            duplicates: counters
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed),
            mismatches: counters
                .mismatches
                .load(std::sync::atomic::Ordering::Relaxed),
            cleanups: table.cleanups,
            pruned: table.pruned,
            options: self.retention().dedup,
        }
    }
}

/// Whether the pending op carries the request `ids` (its client and request ids).
fn is_request(pending: &PendingOp, ids: &RequestIds) -> bool {
    pending.request.as_ref().is_some_and(|request| {
        request.ids.client_id == ids.client_id && request.ids.request_id == ids.request_id
    })
}
