//! What each recovery mode does about each kind of damage: one table, one function.
//!
//! Recovery first classifies what it found into a [`Damage`] and where it is ([`Position`]),
//! then [`decide`] says what to do. The table reads like the one in `docs/wal-format.md`
//! ("Damage and what each mode does") and the cases of `tests/it/corruption.rs`.

use crate::options::RecoveryMode;

/// What is wrong, as far as deciding what to do about it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Segment sequence numbers skip or repeat before a segment: a segment is missing.
    SequenceGap,
    /// A segment's header does not check, or does not fit its name, the log, or the segment
    /// before it. `torn_creation`: the last file, no longer than a header (a crash while it
    /// was being created).
    BadHeader { torn_creation: bool },
    /// A frame does not check (or has an id out of order) and valid frames follow it in the
    /// segment: a torn write cannot leave valid frames after itself, so this is not a tail.
    BadFrame,
    /// A [`Damage::BadFrame`] whose records all lie below
    /// [`crate::WalOptions::needed_from`]: the caller holds their effect elsewhere.
    BadFrameNotNeeded,
    /// A frame does not check and nothing valid follows it: the segment's end is torn.
    TornTail,
    /// A block of a compressed segment, or its index (`only_index`: every block reads).
    /// Compressed segments are fsynced before they get their name: never a torn tail.
    BadBlock { only_index: bool },
}

/// Where the damaged segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// The last segment: the only one that can hold unsynced (torn) bytes.
    Last,
    /// A segment before the last.
    Earlier,
}

/// What recovery does about one damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Open fails with `Error::Corrupt`; nothing on disk changes.
    Refuse,
    /// Remove the file: a segment whose creation was cut short held nothing acknowledged.
    RemoveFile,
    /// Cut the segment where the good frames end.
    CutTail,
    /// Keep what precedes the damage; remove the rest of the segment and every later one.
    DropFromHere,
    /// Keep every record: rewrite the compressed segment plain (only its index was lost).
    RewritePlain,
    /// Report a hole and go on past it.
    SkipOver,
    /// Keep every record; readers may not cross the damage: the segment is read from where
    /// whole records resume after it ([`crate::WalOptions::needed_from`]).
    Fence,
}

/// What `mode` does about `damage` at `position`.
pub(crate) fn decide(mode: RecoveryMode, damage: Damage, position: Position) -> Action {
    use Action::*;
    use Damage::*;
    use RecoveryMode::*;
    match (damage, mode, position) {
        (
            BadHeader {
                torn_creation: true,
            },
            Strict,
            _,
        ) => Refuse,
        (
            BadHeader {
                torn_creation: true,
            },
            _,
            _,
        ) => RemoveFile,
        (TornTail, TolerateTornTail | PointInTime | SkipCorrupt, Position::Last) => CutTail,
        (BadFrameNotNeeded, TolerateTornTail, _) => Fence,
        (_, Strict | TolerateTornTail, _) => Refuse,
        (BadBlock { only_index: true }, PointInTime, _) => RewritePlain,
        (_, PointInTime, _) => DropFromHere,
        (_, SkipCorrupt, _) => SkipOver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of `docs/wal-format.md`, row by row.
    #[test]
    fn the_table() {
        use Action::*;
        use Damage::*;
        use Position::*;
        let modes = [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::PointInTime,
            RecoveryMode::Strict,
            RecoveryMode::SkipCorrupt,
        ];
        // (damage, position, [tolerate-torn-tail, point-in-time, strict, skip-corrupt])
        let rows: [(Damage, Position, [Action; 4]); 11] = [
            (TornTail, Last, [CutTail, CutTail, Refuse, CutTail]),
            (TornTail, Earlier, [Refuse, DropFromHere, Refuse, SkipOver]),
            (BadFrame, Last, [Refuse, DropFromHere, Refuse, SkipOver]),
            (BadFrame, Earlier, [Refuse, DropFromHere, Refuse, SkipOver]),
            (
                BadFrameNotNeeded,
                Last,
                [Fence, DropFromHere, Refuse, SkipOver],
            ),
            (
                BadFrameNotNeeded,
                Earlier,
                [Fence, DropFromHere, Refuse, SkipOver],
            ),
            (
                SequenceGap,
                Earlier,
                [Refuse, DropFromHere, Refuse, SkipOver],
            ),
            (
                BadHeader {
                    torn_creation: false,
                },
                Earlier,
                [Refuse, DropFromHere, Refuse, SkipOver],
            ),
            (
                BadHeader {
                    torn_creation: true,
                },
                Last,
                [RemoveFile, RemoveFile, Refuse, RemoveFile],
            ),
            (
                BadBlock { only_index: false },
                Earlier,
                [Refuse, DropFromHere, Refuse, SkipOver],
            ),
            (
                BadBlock { only_index: true },
                Earlier,
                [Refuse, RewritePlain, Refuse, SkipOver],
            ),
        ];
        for (damage, position, actions) in rows {
            for (mode, action) in modes.into_iter().zip(actions) {
                assert_eq!(
                    decide(mode, damage, position),
                    action,
                    "{damage:?} {position:?} {mode}"
                );
            }
        }
    }
}
