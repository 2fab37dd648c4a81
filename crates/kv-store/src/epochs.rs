//! Which leader epoch wrote which ids: the history replication uses to find where a
//! follower's log parts from the leader's (Kafka's leader-epoch cache).
//!
//! The history is a list of `(epoch, first id written in it)`, rebuilt from the entries
//! themselves when the store opens (every entry carries its epoch), extended as entries are
//! appended and cut back when the log is truncated.

/// The start of each epoch in the log, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    starts: Vec<(u64, u64)>,
}

impl EpochHistory {
    /// Records that entry `id` was written in `epoch`.
    pub fn observe(&mut self, epoch: u64, id: u64) {
        match self.starts.last() {
            Some(&(last_epoch, _)) if last_epoch == epoch => {}
            _ => self.starts.push((epoch, id)),
        }
    }

    /// The epoch of the entry with `id`, if the history covers it (it does not know where the
    /// log ends: callers check `id` against the last id).
    pub fn epoch_at(&self, id: u64) -> Option<u64> {
        let position = self.starts.partition_point(|&(_, first_id)| first_id <= id);
        position.checked_sub(1).map(|index| self.starts[index].0)
    }

    /// The last id, at most `last_id`, written in an epoch `<= epoch`: where a follower whose
    /// last entry has `epoch` must cut its log to agree with this one.
    pub fn end_of_epoch(&self, epoch: u64, last_id: u64) -> u64 {
        match self
            .starts
            .iter()
            .find(|&&(start_epoch, _)| start_epoch > epoch)
        {
            Some(&(_, first_id)) => first_id.saturating_sub(1).min(last_id),
            None => last_id,
        }
    }

    /// Forgets ids after `after_id`.
    pub fn truncate_after(&mut self, after_id: u64) {
        self.starts.retain(|&(_, first_id)| first_id <= after_id);
    }

    /// The epoch of the newest entry.
    pub fn last_epoch(&self) -> Option<u64> {
        self.starts.last().map(|&(epoch, _)| epoch)
    }

    /// `(epoch, first id)` pairs, oldest first.
    pub fn starts(&self) -> &[(u64, u64)] {
        &self.starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_truncation() {
        let mut history = EpochHistory::default();
        for id in 1..=5 {
            history.observe(1, id);
        }
        for id in 6..=8 {
            history.observe(3, id);
        }
        assert_eq!(history.starts(), &[(1, 1), (3, 6)]);
        assert_eq!(history.epoch_at(0), None);
        assert_eq!(history.epoch_at(5), Some(1));
        assert_eq!(history.epoch_at(7), Some(3));
        assert_eq!(history.end_of_epoch(1, 8), 5);
        assert_eq!(history.end_of_epoch(2, 8), 5);
        assert_eq!(history.end_of_epoch(3, 8), 8);
        assert_eq!(history.end_of_epoch(0, 8), 0);
        history.truncate_after(5);
        assert_eq!(history.last_epoch(), Some(1));
        assert_eq!(history.end_of_epoch(1, 5), 5);
    }
}
