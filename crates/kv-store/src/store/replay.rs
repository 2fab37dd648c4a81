//! Rebuilding the map at open: the records of the log after the snapshot's id, applied up to
//! the apply limit, later ones kept pending.

use super::*;

/// What replaying the log rebuilds: the map, its applied id, the epoch history, the ops past
/// the apply limit (still pending) and how many records were applied.
#[derive(Default)]
pub(super) struct Replayed {
    pub(super) map: AppliedState,
    pub(super) applied_id: u64,
    pub(super) epochs: EpochHistory,
    pub(super) pending: VecDeque<(u64, PendingOp)>,
    pub(super) replayed_records: u64,
}

impl Replayed {
    pub(super) fn from_snapshot(snapshot: snapshot::LoadedSnapshot) -> Replayed {
        Replayed {
            map: snapshot.map,
            applied_id: snapshot.applied_id,
            epochs: snapshot.epochs,
            ..Replayed::default()
        }
    }
}

/// Replays the records of the log after `base` (the id `start` holds the map at) onto
/// `start`, applying those up to `apply_limit`; later records become pending ops. Fails with
/// [`Error::Gap`] when the log does not continue `base`.
pub(super) fn replay(
    wal: &Wal,
    start: Replayed,
    base: u64,
    apply_limit: u64,
    retention: &RetentionOptions,
) -> Result<Replayed> {
    // Where the log starts, records or not: an empty log that starts past `base + 1` (purged
    // after a newer snapshot that is now unreadable) lacks ids as much as one with records.
    let wal_first_id = wal.first_id().unwrap_or_else(|| wal.start_id());
    if wal_first_id > base + 1 {
        return Err(Error::Gap {
            wal_first_id,
            snapshot_id: (base > 0).then_some(base),
            skipped: Vec::new(),
        });
    }
    let mut replayed = start;
    for record in wal.iter_from(base + 1) {
        let record = record?;
        let entry = LogEntry::decode(record.payload()).map_err(|reason| Error::Decode {
            id: record.id,
            reason,
        })?;
        replayed.epochs.observe(entry.epoch, record.id);
        if record.id <= apply_limit {
            let request = entry.request.as_ref();
            replayed
                .map
                .apply(record.id, &entry.op, request, false, retention);
            replayed.applied_id = record.id;
            replayed.replayed_records += 1;
        } else {
            replayed.pending.push_back((
                record.id,
                PendingOp {
                    op: entry.op,
                    request: entry.request,
                    outcome: None,
                },
            ));
        }
    }
    Ok(replayed)
}
