//! Running a write to its outcome: submit (finished even if the client hangs up), wait for the
//! acknowledgements, wait for the outcome when the answer depends on it, and answer a retried
//! request with the outcome its first submission got.

use std::time::Instant;

use kv_replication::{Acks, Written};
use kv_store::{Command, Outcome, OutcomeSlot};

use crate::error::{Error, Result};
use crate::state::AppState;

/// A write carried out (or found carried out before).
#[derive(Debug)]
pub(crate) struct Executed {
    /// The entry's id: the revision of what it wrote.
    pub id: u64,
    /// What applying it decided; `None` only when the caller did not need it and it was not
    /// applied yet (`acks=leader` under a write quorum above 1).
    pub outcome: Option<Outcome>,
    /// Whether this is the first submission's outcome, repeated for a retry.
    pub replayed: bool,
}

/// Carries out `command` under `acks`. With `need_outcome` (conditional writes, transactions:
/// the answer is the outcome) it also waits until the entry is applied. A request whose ids
/// were used before by the same request gets that request's outcome (waiting for it if still
/// pending; submitting again if the first entry was cut from the log before it committed); by
/// another request, [`Error::RequestMismatch`].
pub(crate) async fn execute(
    state: &AppState,
    command: Command,
    acks: Acks,
    need_outcome: bool,
) -> Result<Executed> {
    // Only a request with ids may be submitted a second time (below): a copy for that, and
    // otherwise the value moves into the log (a 1 MiB value was cloned on every PUT).
    let mut spare = command.request.is_some().then(|| command.clone());
    let mut command = command;
    loop {
        match submit(state, command, acks).await {
            Ok(Written { id, outcome }) => {
                let outcome = match outcome.get() {
                    Some(outcome) => Some(outcome),
                    None if need_outcome => Some(
                        wait_for_outcome(state, id, &outcome)
                            .await?
                            .ok_or_else(|| cut_away(state, id))?,
                    ),
                    None => None,
                };
                return Ok(Executed {
                    id,
                    outcome,
                    replayed: false,
                });
            }
            Err(Error::Store(kv_store::Error::DuplicateRequest { id, outcome })) => {
                match wait_for_outcome(state, id, &outcome).await? {
                    Some(outcome) => {
                        return Ok(Executed {
                            id,
                            outcome: Some(outcome),
                            replayed: true,
                        })
                    }
                    // The first submission's entry was cut (it never committed): this one is
                    // the request's only chance, once.
                    None => match spare.take() {
                        Some(again) => command = again,
                        None => return Err(cut_away(state, id)),
                    },
                }
            }
            Err(Error::Store(kv_store::Error::RequestMismatch { id })) => {
                return Err(Error::RequestMismatch { id })
            }
            Err(error) => return Err(error),
        }
    }
}

/// Runs the write so that a client that hangs up cannot stop it half-way (kv-replication's
/// `Node::write_to_completion`: a write dropped after its submit is finished on a task of its
/// own).
async fn submit(state: &AppState, command: Command, acks: Acks) -> Result<Written> {
    Ok(state.node.write_to_completion(command, acks).await?)
}

/// Waits (up to the node's acks timeout) until entry `id` is applied; its outcome, or `None`
/// if the entry was dropped from the log instead (a cut after a leader change).
async fn wait_for_outcome(
    state: &AppState,
    id: u64,
    outcome: &OutcomeSlot,
) -> Result<Option<Outcome>> {
    if let Some(outcome) = outcome.get() {
        return Ok(Some(outcome));
    }
    let started = Instant::now();
    let timeout = state.node.acks_timeout();
    if !state.node.wait_applied(id, timeout).await {
        return Err(Error::AcksTimeout {
            id,
            commit_id: state.node.commit_id(),
            detail: format!(
                "entry {id} is in the leader's log but was not applied within {} ms; its outcome is not known yet",
                started.elapsed().as_millis()
            ),
        });
    }
    Ok(outcome.get())
}

/// Entry `id` never committed: it was cut from the log after a leader change. Answered as an
/// unknown outcome (503 with the id): sending the request again is safe.
fn cut_away(state: &AppState, id: u64) -> Error {
    Error::AcksTimeout {
        id,
        commit_id: state.node.commit_id(),
        detail: format!(
            "entry {id} was dropped from the log before it committed (a leader change); send the request again"
        ),
    }
}
