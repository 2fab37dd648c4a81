//! The `cas` and `txn` workloads: conditional writes on keys each worker owns.
//!
//! A compare-and-set only measures the write path if it succeeds, and it succeeds only if the
//! writer knows the key's current `mod_revision`. So in these workloads every worker *owns*
//! its keys — worker `w` of `n` writes only the keys whose index is `w` modulo `n` — and
//! remembers each owned key's `mod_revision` from its last answer: nobody else changes them,
//! so a 412 (or a transaction whose compare fails) means kvd lost or reordered a write, and is
//! counted as a failure ([`crate::outcome::FailureKind::ConditionFailed`]). Before the warm-up
//! each worker reads its keys once (`GET` on the first URL) to learn where they stand.
//!
//! - `cas`: `PUT /key/{k}` with `If-Match: "<mod_revision>"` (`If-None-Match: *` for a key
//!   that does not exist yet). The answer's `id` is the key's new `mod_revision`.
//! - `txn`: `POST /txn` with one compare — the owned key's `mod_revision` is the one last
//!   seen — and four operations in the success branch: puts of that key and of a second owned
//!   key, then gets of two keys drawn from the whole key space. The answer's `revision` is
//!   the new `mod_revision` of both written keys.
//!
//! Everything here is without I/O: the runner sends what these functions build and feeds the
//! answers back.

use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;

use crate::keys::KeySpace;

/// The `mod_revision` of an absent key, as etcd and kvd compare it.
pub const ABSENT_REVISION: u64 = 0;

/// The keys one worker owns and the `mod_revision` it last saw for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKeys {
    worker_index: u64,
    worker_count: u64,
    /// By slot: slot `s` is key index `s * worker_count + worker_index`.
    revisions: Vec<u64>,
}

impl OwnedKeys {
    /// The keys of worker `worker_index` of `worker_count` among `key_count`, none seen yet
    /// (every revision [`ABSENT_REVISION`] until [`OwnedKeys::observe`] says otherwise).
    pub fn new(worker_index: usize, worker_count: usize, key_count: u64) -> OwnedKeys {
        let worker_index = worker_index as u64;
        let worker_count = (worker_count as u64).max(1);
        let owned_count = key_count
            .saturating_sub(worker_index)
            .div_ceil(worker_count);
        OwnedKeys {
            worker_index,
            worker_count,
            revisions: vec![ABSENT_REVISION; owned_count as usize],
        }
    }

    /// How many keys the worker owns.
    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    /// Whether the worker owns no key (more workers than keys).
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// The key index of `slot`.
    pub fn key_index(&self, slot: usize) -> u64 {
        slot as u64 * self.worker_count + self.worker_index
    }

    /// The slot of an owned `key_index`, `None` for another worker's key.
    pub fn slot(&self, key_index: u64) -> Option<usize> {
        let owned = key_index % self.worker_count == self.worker_index;
        let slot = (key_index / self.worker_count) as usize;
        (owned && slot < self.revisions.len()).then_some(slot)
    }

    /// Draws one owned key, uniformly. The worker must own one.
    pub fn choose_key_index(&self, rng: &mut impl Rng) -> u64 {
        self.key_index(rng.gen_range(0..self.revisions.len()))
    }

    /// Draws an owned key other than `key_index`, uniformly; `None` if the worker owns only
    /// that one.
    pub fn choose_other_key_index(&self, key_index: u64, rng: &mut impl Rng) -> Option<u64> {
        let excluded_slot = self.slot(key_index)?;
        if self.revisions.len() < 2 {
            return None;
        }
        let slot = rng.gen_range(0..self.revisions.len() - 1);
        Some(self.key_index(if slot >= excluded_slot {
            slot + 1
        } else {
            slot
        }))
    }

    /// The `mod_revision` last seen for an owned key ([`ABSENT_REVISION`]: absent or unknown).
    pub fn revision(&self, key_index: u64) -> u64 {
        self.slot(key_index)
            .map_or(ABSENT_REVISION, |slot| self.revisions[slot])
    }

    /// Remembers an owned key's `mod_revision`; other keys are ignored.
    pub fn observe(&mut self, key_index: u64, revision: u64) {
        if let Some(slot) = self.slot(key_index) {
            self.revisions[slot] = revision;
        }
    }
}

/// The condition header of a CAS PUT on a key last seen at `revision`: `If-Match: "<rev>"`,
/// or `If-None-Match: *` for an absent key.
pub fn cas_condition(revision: u64) -> (http::header::HeaderName, String) {
    if revision == ABSENT_REVISION {
        (http::header::IF_NONE_MATCH, "*".to_string())
    } else {
        (http::header::IF_MATCH, format!("\"{revision}\""))
    }
}

/// The four operations and the compare of one `txn` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnPlan {
    /// The owned key compared (its `mod_revision`) and put.
    pub compared_key_index: u64,
    /// The `mod_revision` the compare expects.
    pub compared_revision: u64,
    /// The second owned key put.
    pub second_key_index: u64,
    /// Two keys read, from the whole key space.
    pub read_key_indexes: [u64; 2],
}

impl TxnPlan {
    /// Draws a transaction around the owned key `compared_key_index`: it is compared and put,
    /// another owned key is put, two keys of the whole space are read. The worker must own at
    /// least two keys.
    pub fn draw(
        owned_keys: &OwnedKeys,
        compared_key_index: u64,
        key_count: u64,
        rng: &mut impl Rng,
    ) -> TxnPlan {
        let second_key_index = owned_keys
            .choose_other_key_index(compared_key_index, rng)
            .expect("txn workers own at least two keys (checked in the configuration)");
        TxnPlan {
            compared_key_index,
            compared_revision: owned_keys.revision(compared_key_index),
            second_key_index,
            read_key_indexes: [rng.gen_range(0..key_count), rng.gen_range(0..key_count)],
        }
    }

    /// The `POST /txn` body (see docs/http-api.md): compare the first key's `mod_revision`;
    /// on success put both owned keys (each with kv-bench's value for it) and get the two
    /// read keys; no failure branch.
    pub fn body(&self, key_space: &KeySpace) -> Bytes {
        let key = |key_index| key_space.key(key_index);
        let value = |key_index| key_space.value(key_index);
        let body = format!(
            concat!(
                r#"{{"compare":[{{"key":"{compared}","target":"mod_revision","result":"=","#,
                r#""mod_revision":{revision}}}],"success":["#,
                r#"{{"put":{{"key":"{compared}","value":"{compared_value}"}}}},"#,
                r#"{{"put":{{"key":"{second}","value":"{second_value}"}}}},"#,
                r#"{{"get":{{"key":"{first_read}"}}}},{{"get":{{"key":"{second_read}"}}}}]}}"#,
            ),
            compared = key(self.compared_key_index),
            revision = self.compared_revision,
            compared_value = value(self.compared_key_index),
            second = key(self.second_key_index),
            second_value = value(self.second_key_index),
            first_read = key(self.read_key_indexes[0]),
            second_read = key(self.read_key_indexes[1]),
        );
        Bytes::from(body)
    }
}

/// What an answer says about the revision of the key a CAS PUT wrote: the new one after a
/// 200 (its `id`), the current one after a 412 (`mod_revision`, `null` when absent); `None`
/// when the answer does not say (then the worker keeps what it knew).
pub fn revision_after_cas(status: http::StatusCode, body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Written {
        id: u64,
    }
    #[derive(Deserialize)]
    struct Refused {
        mod_revision: Option<u64>,
    }
    match status {
        http::StatusCode::OK => serde_json::from_slice::<Written>(body)
            .ok()
            .map(|written| written.id),
        http::StatusCode::PRECONDITION_FAILED => serde_json::from_slice::<Refused>(body)
            .ok()
            .map(|refused| refused.mod_revision.unwrap_or(ABSENT_REVISION)),
        _ => None,
    }
}

/// What a `txn` answer says about the revisions of the keys it wrote: both written keys are
/// at `revision` when it succeeded; when its compare failed, the compared key is at
/// `failed_compare.current.mod_revision` (absent: `null`) and the second is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnVerdict {
    /// Applied: both written keys are now at this revision.
    Succeeded {
        /// The transaction's revision.
        revision: u64,
    },
    /// The compare failed: the compared key is at this `mod_revision`.
    CompareFailed {
        /// The compared key's current `mod_revision` (0: absent).
        current_revision: u64,
    },
}

/// Reads the verdict of a `200` answer to `POST /txn`; `None` if the body is not one.
pub fn txn_verdict(body: &[u8]) -> Option<TxnVerdict> {
    #[derive(Deserialize)]
    struct Answer {
        succeeded: bool,
        revision: u64,
        failed_compare: Option<FailedCompare>,
    }
    #[derive(Deserialize)]
    struct FailedCompare {
        current: Option<Current>,
    }
    #[derive(Deserialize)]
    struct Current {
        mod_revision: u64,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    if answer.succeeded {
        return Some(TxnVerdict::Succeeded {
            revision: answer.revision,
        });
    }
    let current = answer.failed_compare?.current;
    Some(TxnVerdict::CompareFailed {
        current_revision: current.map_or(ABSENT_REVISION, |current| current.mod_revision),
    })
}

/// The `mod_revision` in a `200` answer to `GET /key/{k}` (the learning read).
pub fn revision_of_read(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Read {
        mod_revision: u64,
    }
    serde_json::from_slice::<Read>(body)
        .ok()
        .map(|read| read.mod_revision)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn workers_own_disjoint_keys_covering_the_space() {
        let key_count = 103;
        let worker_count = 8;
        let mut owners = vec![Vec::new(); key_count as usize];
        for worker_index in 0..worker_count {
            let owned_keys = OwnedKeys::new(worker_index, worker_count, key_count);
            for slot in 0..owned_keys.len() {
                let key_index = owned_keys.key_index(slot);
                assert_eq!(owned_keys.slot(key_index), Some(slot));
                owners[key_index as usize].push(worker_index);
            }
        }
        for (key_index, owner) in owners.iter().enumerate() {
            assert_eq!(owner.len(), 1, "key {key_index}: {owner:?}");
        }
        let first = OwnedKeys::new(0, worker_count, key_count);
        assert_eq!(first.len(), 13);
        assert_eq!(first.slot(1), None);
        assert_eq!(first.slot(104), None);
        assert!(OwnedKeys::new(9, 10, 5).is_empty());
    }

    #[test]
    fn draws_stay_among_owned_keys() {
        let seed = 11;
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let owned_keys = OwnedKeys::new(3, 4, 40);
        for _ in 0..1000 {
            let key_index = owned_keys.choose_key_index(&mut rng);
            assert!(owned_keys.slot(key_index).is_some(), "{key_index}");
            let other = owned_keys
                .choose_other_key_index(key_index, &mut rng)
                .unwrap();
            assert_ne!(other, key_index);
            assert!(owned_keys.slot(other).is_some(), "{other}");
        }
        let single = OwnedKeys::new(0, 4, 1);
        assert_eq!(single.choose_other_key_index(0, &mut rng), None);
    }

    #[test]
    fn revisions_are_remembered_per_owned_key() {
        let mut owned_keys = OwnedKeys::new(1, 2, 10);
        assert_eq!(owned_keys.revision(3), ABSENT_REVISION);
        owned_keys.observe(3, 42);
        owned_keys.observe(4, 99); // not owned: ignored
        assert_eq!(owned_keys.revision(3), 42);
        assert_eq!(owned_keys.revision(4), ABSENT_REVISION);
        assert_eq!(owned_keys.revision(5), ABSENT_REVISION);
    }

    #[test]
    fn cas_condition_matches_the_etag_or_creates() {
        let (name, value) = cas_condition(17);
        assert_eq!(name, http::header::IF_MATCH);
        assert_eq!(value, "\"17\"");
        let (name, value) = cas_condition(ABSENT_REVISION);
        assert_eq!(name, http::header::IF_NONE_MATCH);
        assert_eq!(value, "*");
    }

    #[test]
    fn txn_body_is_the_documented_shape() {
        let key_space = KeySpace::new(100, 8, 20).unwrap();
        let plan = TxnPlan {
            compared_key_index: 4,
            compared_revision: 321,
            second_key_index: 8,
            read_key_indexes: [50, 51],
        };
        let body: serde_json::Value = serde_json::from_slice(&plan.body(&key_space)).unwrap();
        let expected = serde_json::json!({
            "compare": [{"key": "key-0004", "target": "mod_revision", "result": "=",
                         "mod_revision": 321}],
            "success": [
                {"put": {"key": "key-0004", "value": key_space.value(4)}},
                {"put": {"key": "key-0008", "value": key_space.value(8)}},
                {"get": {"key": "key-0050"}},
                {"get": {"key": "key-0051"}},
            ],
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn txn_plans_write_two_owned_keys_and_read_any() {
        let seed = 5;
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut owned_keys = OwnedKeys::new(2, 3, 30);
        owned_keys.observe(2, 77);
        for _ in 0..200 {
            let compared_key_index = owned_keys.choose_key_index(&mut rng);
            let plan = TxnPlan::draw(&owned_keys, compared_key_index, 30, &mut rng);
            assert_eq!(plan.compared_key_index, compared_key_index);
            assert!(owned_keys.slot(plan.second_key_index).is_some());
            assert_ne!(plan.compared_key_index, plan.second_key_index);
            assert_eq!(
                plan.compared_revision,
                owned_keys.revision(plan.compared_key_index)
            );
            assert!(plan.read_key_indexes.iter().all(|&index| index < 30));
        }
    }

    #[test]
    fn answers_give_the_new_revisions() {
        use http::StatusCode;
        let written = br#"{"status":"ok","id":9,"key":"counter","version":3}"#;
        assert_eq!(revision_after_cas(StatusCode::OK, written), Some(9));
        let stale = br#"{"detail":"precondition failed: If-Match does not hold: key \"counter\" is at mod_revision 9","mod_revision":9,"version":3,"revision":10}"#;
        assert_eq!(
            revision_after_cas(StatusCode::PRECONDITION_FAILED, stale),
            Some(9)
        );
        let absent =
            br#"{"detail":"precondition failed","mod_revision":null,"version":null,"revision":10}"#;
        assert_eq!(
            revision_after_cas(StatusCode::PRECONDITION_FAILED, absent),
            Some(ABSENT_REVISION)
        );
        assert_eq!(revision_after_cas(StatusCode::OK, b"garbage"), None);
        assert_eq!(
            revision_after_cas(StatusCode::SERVICE_UNAVAILABLE, written),
            None
        );

        let succeeded = br#"{"succeeded":true,"revision":42,"responses":[{"put":{"key":"a","version":2,"mod_revision":42,"create_revision":7}}]}"#;
        assert_eq!(
            txn_verdict(succeeded),
            Some(TxnVerdict::Succeeded { revision: 42 })
        );
        let failed = br#"{"succeeded":false,"revision":43,"responses":[],"failed_compare":{"index":0,"key":"a","current":{"version":2,"mod_revision":42,"create_revision":7}}}"#;
        assert_eq!(
            txn_verdict(failed),
            Some(TxnVerdict::CompareFailed {
                current_revision: 42
            })
        );
        let failed_absent = br#"{"succeeded":false,"revision":44,"responses":[],"failed_compare":{"index":0,"key":"a","current":null}}"#;
        assert_eq!(
            txn_verdict(failed_absent),
            Some(TxnVerdict::CompareFailed {
                current_revision: ABSENT_REVISION
            })
        );
        assert_eq!(txn_verdict(b"{}"), None);

        let read = br#"{"key":"a","value":1,"version":2,"mod_revision":42,"create_revision":7}"#;
        assert_eq!(revision_of_read(read), Some(42));
        assert_eq!(revision_of_read(br#"{"key":"a","value":1}"#), None);
    }
}
