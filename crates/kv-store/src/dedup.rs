//! Idempotent requests: the table of requests applied, by `(client_id, request_id)`, with the
//! outcome each got, so a retry is answered with the original outcome instead of being applied
//! twice.
//!
//! The request ids travel **in the log record** with the write (see `entry.rs`), so the table
//! is state like the map: every replica builds the same one by applying the same records, it
//! is rebuilt by replay after a restart, carried in snapshots, and holds on a new leader after
//! a failover. A record's request part also carries the leader's clock when it was written;
//! entries are pruned by that time (older than `age_max_ms` before the last request applied)
//! and by count (`entries_max`, oldest first), at apply time, so every replica prunes alike.
//!
//! What is remembered is what the log decided: a transaction whose compare failed is
//! remembered as failed (a retry gets the same failure, never a success); a request refused
//! before reaching the log (bad input, a DELETE of an absent key) is not remembered at all.

use std::sync::Arc;

use crate::encoding::Malformed;
use crate::encoding::{put_bytes, put_u64, Reader};
use crate::outcome::Outcome;

/// Pruning limits of the dedup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupOptions {
    /// Most requests remembered; beyond it the oldest are forgotten.
    pub entries_max: usize,
    /// Requests older than this (by the leader's clock in their records, against the last
    /// request applied) are forgotten.
    pub age_max_ms: u64,
}

/// The original project's expiry (one hour), and ten times its cache size.
impl Default for DedupOptions {
    fn default() -> DedupOptions {
        DedupOptions {
            entries_max: 100_000,
            age_max_ms: 3_600_000,
        }
    }
}

/// Longest client or request id accepted (bytes).
pub const REQUEST_ID_BYTES_MAX: usize = 256;

/// The ids of an idempotent request, as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestIds {
    /// Who sent it (empty for an `Idempotency-Key` request).
    pub client_id: String,
    /// Which of the client's requests it is.
    pub request_id: String,
    /// The request's form, as the layer above defines it (the HTTP method and variant): part
    /// of the fingerprint, and kept so a retry can be answered in the same form.
    pub form: u8,
}

/// An idempotent request as its log record carries it: its ids and the leader's clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestMeta {
    /// The client's ids.
    pub ids: RequestIds,
    /// The leader's clock when the record was written (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

/// What the table remembers of an applied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The op's fingerprint ([`crate::Op::fingerprint`]): a retry must match it.
    pub fingerprint: u64,
    /// The request's form.
    pub form: u8,
    /// The leader's clock when it was written.
    pub timestamp_ms: u64,
    /// Its outcome (reads elided).
    pub outcome: Outcome,
}

/// The clock a leader stamps idempotent requests with: the log's, not its own wall clock.
///
/// Pruning measures a request's age against the stamp of the last request applied, so stamps
/// of successive leaders must agree: a new leader whose wall clock ran ahead of its
/// predecessor's by more than the age limit made every node forget, at its first idempotent
/// write, every request the old leader had remembered seconds before — and a retry of one was
/// applied again (found by a new user with a node under `faketime`). The clock follows the
/// newest stamp the node has read from the log (replayed, applied, from a snapshot) and runs on
/// from it at the rate of this node's monotonic clock; only a node whose log holds no stamp
/// yet takes its wall clock. The stamp of a node restarted after a pause continues from the
/// last one it read, so requests are remembered longer by the time it was down, never shorter.
#[derive(Debug, Default)]
pub(crate) struct RequestClock {
    anchor: Option<(u64, std::time::Instant)>,
}

impl RequestClock {
    fn now_ms(&self) -> Option<u64> {
        self.anchor
            .map(|(ms, at)| ms.saturating_add(at.elapsed().as_millis() as u64))
    }

    /// A stamp read from the log: the clock follows it when it is ahead.
    pub fn observe(&mut self, ms: u64) {
        if self.now_ms().is_none_or(|now| ms > now) {
            self.anchor = Some((ms, std::time::Instant::now()));
        }
    }

    /// The stamp for a new request (`wall_ms`: this node's wall clock, used only before any
    /// stamp was read).
    pub fn stamp(&mut self, wall_ms: u64) -> u64 {
        let ms = self.now_ms().unwrap_or(wall_ms);
        self.anchor = Some((ms, std::time::Instant::now()));
        ms
    }
}

/// `(client_id, request_id)`, shared between the table and its order.
type RequestKey = Arc<(String, String)>;

/// The table itself (part of the applied state). Persistent collections of shared pointers,
/// so the snapshot view's clone is `O(1)` and a later write copies only a few pointers.
#[derive(Debug, Clone, Default)]
pub(crate) struct DedupTable {
    entries: imbl::HashMap<RequestKey, Arc<RequestRecord>>,
    /// Keys in the order their records were applied, with the record's id, for pruning (an
    /// entry replaced later is skipped when its stale position comes up).
    order: imbl::Vector<(u64, RequestKey)>,
    /// The leader's clock in the last request applied: age is measured from it (not from the
    /// newest stamp ever seen, which a clock that once ran ahead would keep far in the future).
    last_timestamp_ms: u64,
    /// Entries pruned since the table was built (by replay or from a snapshot).
    pub pruned: u64,
    /// Pruning passes that removed something.
    pub cleanups: u64,
    /// Entries added since the table was built.
    pub inserted: u64,
}

impl DedupTable {
    pub fn get(&self, client_id: &str, request_id: &str) -> Option<&RequestRecord> {
        // imbl's HashMap looks up by the owned key type.
        self.entries
            .get(&(client_id.to_owned(), request_id.to_owned()))
            .map(|record| &**record)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The stamp of the last request applied (0: none).
    pub fn last_timestamp_ms(&self) -> u64 {
        self.last_timestamp_ms
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, String), &RequestRecord)> {
        self.entries.iter().map(|(key, record)| (&**key, &**record))
    }

    /// Remembers the request applied as record `outcome.revision`, then prunes.
    pub fn insert(&mut self, request: &RequestIds, record: RequestRecord, options: &DedupOptions) {
        let key = Arc::new((request.client_id.clone(), request.request_id.clone()));
        self.order.push_back((record.outcome.revision, key.clone()));
        self.last_timestamp_ms = record.timestamp_ms;
        self.entries.insert(key, Arc::new(record));
        self.inserted += 1;
        self.prune(options);
    }

    fn prune(&mut self, options: &DedupOptions) {
        let oldest_kept_ms = self.last_timestamp_ms.saturating_sub(options.age_max_ms);
        let mut removed = 0;
        while let Some((id, key)) = self.order.front() {
            let Some(record) = self.entries.get(key) else {
                self.order.pop_front();
                continue;
            };
            if record.outcome.revision != *id {
                // Replaced by a later record of the same ids: that one's position decides.
                self.order.pop_front();
                continue;
            }
            let too_many = self.entries.len() > options.entries_max;
            if !too_many && record.timestamp_ms >= oldest_kept_ms {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.entries.remove(&key);
            removed += 1;
        }
        if removed > 0 {
            self.pruned += removed;
            self.cleanups += 1;
        }
    }

    /// Encodes every entry, oldest first (a snapshot section).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let live: Vec<&(u64, RequestKey)> = self
            .order
            .iter()
            .filter(|(id, key)| {
                self.entries
                    .get(key)
                    .is_some_and(|record| record.outcome.revision == *id)
            })
            .collect();
        put_u64(out, live.len() as u64);
        put_u64(out, self.last_timestamp_ms);
        for (_, key) in live {
            let record = &self.entries[key];
            put_bytes(out, key.0.as_bytes());
            put_bytes(out, key.1.as_bytes());
            put_u64(out, record.fingerprint);
            out.push(record.form);
            put_u64(out, record.timestamp_ms);
            record.outcome.encode(out);
        }
    }

    /// Reads entries written by [`DedupTable::encode`].
    pub fn decode(reader: &mut Reader<'_>) -> Result<DedupTable, Malformed> {
        let count = reader.u64("request count")?;
        let last_timestamp_ms = reader.u64("last request time")?;
        let mut table = DedupTable {
            last_timestamp_ms,
            ..DedupTable::default()
        };
        for _ in 0..count {
            let text = |bytes: &[u8]| {
                String::from_utf8(bytes.to_vec()).map_err(|_| "request id is not UTF-8".to_owned())
            };
            let key = Arc::new((
                text(reader.bytes("client id")?)?,
                text(reader.bytes("request id")?)?,
            ));
            let record = RequestRecord {
                fingerprint: reader.u64("fingerprint")?,
                form: reader.u8("form")?,
                timestamp_ms: reader.u64("request time")?,
                outcome: Outcome::decode(reader)?,
            };
            table
                .order
                .push_back((record.outcome.revision, key.clone()));
            if table.entries.insert(key, Arc::new(record)).is_some() {
                return Err("a request appears twice".into());
            }
        }
        Ok(table)
    }
}

/// Counts about the dedup table (the original project's `/deduplication_stats`, plus ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupStats {
    /// Requests remembered now.
    pub entries: usize,
    /// Distinct request ids among them.
    pub unique_request_ids: usize,
    /// Distinct client ids among them.
    pub clients: usize,
    /// Requests remembered since the store opened (replay included).
    pub inserted: u64,
    /// Retries refused as duplicates of the same request since the store opened.
    pub duplicates: u64,
    /// Retries refused because their ids named another request.
    pub mismatches: u64,
    /// Pruning passes that forgot something, and requests forgotten.
    pub cleanups: u64,
    /// Requests forgotten by pruning.
    pub pruned: u64,
    /// The limits.
    pub options: DedupOptions,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> RequestIds {
        RequestIds {
            client_id: "c".to_owned(),
            request_id: id.to_owned(),
            form: 1,
        }
    }

    fn record(revision: u64, timestamp_ms: u64) -> RequestRecord {
        RequestRecord {
            fingerprint: revision * 7,
            form: 1,
            timestamp_ms,
            outcome: Outcome {
                revision,
                succeeded: true,
                failed_compare: None,
                responses: Vec::new(),
            },
        }
    }

    #[test]
    fn pruned_by_count_oldest_first_and_by_age() {
        let options = DedupOptions {
            entries_max: 3,
            age_max_ms: 1_000,
        };
        let mut table = DedupTable::default();
        for revision in 1..=4 {
            let id = revision.to_string();
            table.insert(&request(&id), record(revision, 100), &options);
        }
        assert_eq!(table.len(), 3);
        assert!(table.get("c", "1").is_none());
        assert!(table.get("c", "4").is_some());
        // A request 1,000 ms later keeps the others (exactly at the limit); one later still
        // prunes them by age.
        table.insert(&request("5"), record(5, 1_100), &options);
        assert_eq!(table.len(), 3);
        table.insert(&request("6"), record(6, 1_101), &options);
        assert_eq!(table.len(), 2);
        assert!(table.get("c", "5").is_some() && table.get("c", "6").is_some());
        assert_eq!(table.pruned, 4);
    }

    /// The leader's clock stepped forward (a fast clock, then corrected): one request is
    /// stamped far ahead. Requests stamped after the correction must still be remembered.
    /// Before, age was measured from the newest stamp ever applied: once the stamped-ahead
    /// request left the table (by count), every later request was older than "the newest minus
    /// the age limit" and was forgotten the moment it was inserted, so each retry was applied
    /// again until the real clock caught up with the jump.
    #[test]
    fn a_clock_that_jumped_ahead_once_does_not_forget_every_later_request() {
        let options = DedupOptions {
            entries_max: 2,
            age_max_ms: 1_000,
        };
        let mut table = DedupTable::default();
        table.insert(&request("before"), record(1, 10_000), &options);
        table.insert(&request("ahead"), record(2, 10_000 + 3_600_000), &options);
        table.insert(&request("after"), record(3, 10_100), &options);
        table.insert(&request("later"), record(4, 10_200), &options);
        assert!(
            table.get("c", "ahead").is_none(),
            "the oldest, past the count"
        );
        assert!(
            table.get("c", "later").is_some(),
            "forgotten as it was inserted"
        );
        assert!(table.get("c", "after").is_some());
        // Age still prunes, measured from the last request applied.
        table.insert(&request("much later"), record(5, 11_200), &options);
        assert!(table.get("c", "after").is_none());
        assert!(table.get("c", "later").is_some() && table.get("c", "much later").is_some());
    }

    #[test]
    fn a_replaced_entry_is_pruned_by_its_newer_position() {
        let options = DedupOptions {
            entries_max: 2,
            age_max_ms: u64::MAX,
        };
        let mut table = DedupTable::default();
        table.insert(&request("a"), record(1, 1), &options);
        table.insert(&request("b"), record(2, 2), &options);
        table.insert(&request("a"), record(3, 3), &options);
        assert_eq!(table.len(), 2);
        table.insert(&request("c"), record(4, 4), &options);
        assert!(table.get("c", "b").is_none(), "b is now the oldest");
        assert_eq!(
            table.get("c", "a").map(|record| record.outcome.revision),
            Some(3)
        );
    }

    #[test]
    fn encoding_round_trips() {
        let options = DedupOptions::default();
        let mut table = DedupTable::default();
        table.insert(&request("a"), record(1, 1), &options);
        table.insert(&request("b"), record(2, 2), &options);
        table.insert(&request("a"), record(3, 3), &options);
        let mut bytes = Vec::new();
        table.encode(&mut bytes);
        let mut reader = Reader::new(&bytes);
        let decoded = DedupTable::decode(&mut reader).unwrap();
        assert!(reader.is_empty());
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded.get("c", "a"), table.get("c", "a"));
        assert_eq!(decoded.get("c", "b"), table.get("c", "b"));
        assert_eq!(decoded.last_timestamp_ms, 3);
    }

    /// The clock follows a stamp read from the log when it is ahead, runs on from it, and
    /// takes the wall clock only before any stamp was read.
    #[test]
    fn the_request_clock_runs_on_from_the_logs_stamps() {
        let mut clock = RequestClock::default();
        assert_eq!(
            clock.stamp(5_000),
            5_000,
            "no stamp read yet: the wall clock"
        );
        let mut clock = RequestClock::default();
        clock.observe(1_000);
        let first = clock.stamp(9_999_999);
        assert!((1_000..1_000 + 60_000).contains(&first), "{first}");
        // A stamp behind the clock is not followed; one ahead of it is.
        clock.observe(500);
        assert!(clock.stamp(0) >= first);
        clock.observe(100_000);
        let later = clock.stamp(0);
        assert!((100_000..100_000 + 60_000).contains(&later), "{later}");
    }
}
