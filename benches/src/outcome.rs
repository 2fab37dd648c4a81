//! What became of one request: ok, not found, or failed, and why.
//!
//! [`classify_response`] is the whole judgement of an HTTP answer, without I/O. A 404 to a GET
//! or DELETE is *not found*, an expected answer counted on its own, not a failure. A 2xx whose
//! body does not have the documented shape (`{"key","value"}` for a GET, `{"status":"ok"}` for a
//! write) is a *body mismatch*; with value checking on, so is a GET whose value differs from
//! the one kv-bench writes under that key. A conditional write that did not apply — a 412, or
//! a transaction answered `"succeeded":false` — is a *condition failure*: in the `cas` and
//! `txn` workloads each worker owns its keys, so it should never happen.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::workload::Operation;

/// The fate of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx with the expected body.
    Ok,
    /// A 404 to a GET or DELETE: the key is absent.
    NotFound,
    /// Anything else.
    Failed(FailureKind),
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection could be made (refused, unreachable, handshake failed, connect timeout).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
    /// A 4xx answer other than an expected 404 or a 412.
    Status4xx,
    /// A 5xx answer.
    Status5xx,
    /// An answer outside 2xx, 4xx and 5xx.
    StatusOther,
    /// A 2xx whose body is not what the API promises.
    BodyMismatch,
    /// A conditional write that did not apply: a 412, or a transaction whose compare failed.
    ConditionFailed,
}

/// Counts of failed requests by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// See [`FailureKind::Connect`].
    pub connect: u64,
    /// See [`FailureKind::Timeout`].
    pub timeout: u64,
    /// See [`FailureKind::Io`].
    pub io: u64,
    /// See [`FailureKind::Status4xx`].
    pub status_4xx: u64,
    /// See [`FailureKind::Status5xx`].
    pub status_5xx: u64,
    /// See [`FailureKind::StatusOther`].
    pub status_other: u64,
    /// See [`FailureKind::BodyMismatch`].
    pub body_mismatch: u64,
    /// See [`FailureKind::ConditionFailed`]. (Absent from reports older than the field.)
    #[serde(default)]
    pub condition_failed: u64,
}

impl FailureCounts {
    /// Counts one failure.
    pub fn add(&mut self, failure_kind: FailureKind) {
        let counter = match failure_kind {
            FailureKind::Connect => &mut self.connect,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Io => &mut self.io,
            FailureKind::Status4xx => &mut self.status_4xx,
            FailureKind::Status5xx => &mut self.status_5xx,
            FailureKind::StatusOther => &mut self.status_other,
            FailureKind::BodyMismatch => &mut self.body_mismatch,
            FailureKind::ConditionFailed => &mut self.condition_failed,
        };
        *counter += 1;
    }

    /// Adds another set of counts to this one.
    pub fn merge(&mut self, other: &FailureCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.status_other += other.status_other;
        self.body_mismatch += other.body_mismatch;
        self.condition_failed += other.condition_failed;
    }

    /// All failures together.
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.io
            + self.status_4xx
            + self.status_5xx
            + self.status_other
            + self.body_mismatch
            + self.condition_failed
    }
}

/// What a 2xx body is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck<'a> {
    /// Only the shape of the body.
    Shape,
    /// The shape, and for a GET the exact key and value.
    Exact {
        /// The key that was asked for.
        key: &'a str,
        /// The value kv-bench writes under it.
        value: &'a str,
    },
}

#[derive(Deserialize)]
struct GetShape {
    #[allow(dead_code)] // Deserializing proves the field is present.
    value: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
struct GetExact<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WriteAnswer<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TxnAnswer {
    succeeded: bool,
    #[allow(dead_code)] // Deserializing proves the field is present.
    revision: u64,
}

/// Judges one HTTP answer to `operation`.
pub fn classify_response(
    operation: Operation,
    status: http::StatusCode,
    body: &[u8],
    body_check: BodyCheck<'_>,
) -> Outcome {
    if status.is_success() {
        if operation == Operation::Txn {
            return match serde_json::from_slice::<TxnAnswer>(body) {
                Ok(TxnAnswer {
                    succeeded: true, ..
                }) => Outcome::Ok,
                Ok(TxnAnswer {
                    succeeded: false, ..
                }) => Outcome::Failed(FailureKind::ConditionFailed),
                Err(_) => Outcome::Failed(FailureKind::BodyMismatch),
            };
        }
        return if body_matches(operation, body, body_check) {
            Outcome::Ok
        } else {
            Outcome::Failed(FailureKind::BodyMismatch)
        };
    }
    if status == http::StatusCode::PRECONDITION_FAILED {
        return Outcome::Failed(FailureKind::ConditionFailed);
    }
    if status == http::StatusCode::NOT_FOUND
        && matches!(operation, Operation::Get | Operation::Delete)
    {
        return Outcome::NotFound;
    }
    let failure_kind = if status.is_client_error() {
        FailureKind::Status4xx
    } else if status.is_server_error() {
        FailureKind::Status5xx
    } else {
        FailureKind::StatusOther
    };
    Outcome::Failed(failure_kind)
}

fn body_matches(operation: Operation, body: &[u8], body_check: BodyCheck<'_>) -> bool {
    match (operation, body_check) {
        (Operation::Get, BodyCheck::Shape) => serde_json::from_slice::<GetShape>(body).is_ok(),
        (Operation::Get, BodyCheck::Exact { key, value }) => {
            match serde_json::from_slice::<GetExact<'_>>(body) {
                Ok(answer) => answer.key == key && answer.value == value,
                Err(_) => false,
            }
        }
        (Operation::Put | Operation::Delete | Operation::CasPut | Operation::Txn, _) => {
            match serde_json::from_slice::<WriteAnswer<'_>>(body) {
                Ok(answer) => answer.status == "ok",
                Err(_) => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    const GET_BODY: &[u8] = br#"{"key":"key-1","value":"v1"}"#;
    const PUT_BODY: &[u8] = br#"{"status":"ok","id":17}"#;

    #[test]
    fn good_answers_are_ok() {
        let check = BodyCheck::Shape;
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, GET_BODY, check),
            Outcome::Ok
        );
        assert_eq!(
            classify_response(Operation::Put, StatusCode::OK, PUT_BODY, check),
            Outcome::Ok
        );
        assert_eq!(
            classify_response(Operation::Delete, StatusCode::OK, PUT_BODY, check),
            Outcome::Ok
        );
        // The shape check accepts any JSON value, as kvd may store non-strings.
        let number_body = br#"{"key":"k","value":{"n":1}}"#;
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, number_body, check),
            Outcome::Ok
        );
    }

    #[test]
    fn not_found_is_its_own_outcome_for_reads_and_deletes() {
        let body = br#"{"detail":"Key not found"}"#;
        for operation in [Operation::Get, Operation::Delete] {
            assert_eq!(
                classify_response(operation, StatusCode::NOT_FOUND, body, BodyCheck::Shape),
                Outcome::NotFound
            );
        }
        assert_eq!(
            classify_response(
                Operation::Put,
                StatusCode::NOT_FOUND,
                body,
                BodyCheck::Shape
            ),
            Outcome::Failed(FailureKind::Status4xx)
        );
    }

    #[test]
    fn status_classes() {
        let cases = [
            (StatusCode::BAD_REQUEST, FailureKind::Status4xx),
            (StatusCode::PAYLOAD_TOO_LARGE, FailureKind::Status4xx),
            (StatusCode::INTERNAL_SERVER_ERROR, FailureKind::Status5xx),
            (StatusCode::SERVICE_UNAVAILABLE, FailureKind::Status5xx),
            (StatusCode::TEMPORARY_REDIRECT, FailureKind::StatusOther),
        ];
        for (status, failure_kind) in cases {
            assert_eq!(
                classify_response(Operation::Get, status, b"{}", BodyCheck::Shape),
                Outcome::Failed(failure_kind),
                "{status}"
            );
        }
    }

    #[test]
    fn wrong_bodies_are_mismatches() {
        let mismatch = Outcome::Failed(FailureKind::BodyMismatch);
        let check = BodyCheck::Shape;
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, b"", check),
            mismatch
        );
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, b"{\"key\":\"k\"}", check),
            mismatch
        );
        assert_eq!(
            classify_response(
                Operation::Put,
                StatusCode::OK,
                b"{\"status\":\"no\"}",
                check
            ),
            mismatch
        );
        assert_eq!(
            classify_response(Operation::Put, StatusCode::OK, b"not json", check),
            mismatch
        );
    }

    #[test]
    fn exact_check_compares_key_and_value() {
        let right = BodyCheck::Exact {
            key: "key-1",
            value: "v1",
        };
        let wrong_value = BodyCheck::Exact {
            key: "key-1",
            value: "v2",
        };
        let wrong_key = BodyCheck::Exact {
            key: "key-2",
            value: "v1",
        };
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, GET_BODY, right),
            Outcome::Ok
        );
        for check in [wrong_value, wrong_key] {
            assert_eq!(
                classify_response(Operation::Get, StatusCode::OK, GET_BODY, check),
                Outcome::Failed(FailureKind::BodyMismatch)
            );
        }
        // Escapes in the answer are decoded before comparing.
        let escaped = br#"{"key":"key-1","value":"v\u0031"}"#;
        assert_eq!(
            classify_response(Operation::Get, StatusCode::OK, escaped, right),
            Outcome::Ok
        );
    }

    #[test]
    fn conditional_writes_judge_their_verdict() {
        let check = BodyCheck::Shape;
        let cas_written = br#"{"status":"ok","id":9,"key":"k","version":3}"#;
        assert_eq!(
            classify_response(Operation::CasPut, StatusCode::OK, cas_written, check),
            Outcome::Ok
        );
        let stale =
            br#"{"detail":"precondition failed","mod_revision":9,"version":3,"revision":10}"#;
        assert_eq!(
            classify_response(
                Operation::CasPut,
                StatusCode::PRECONDITION_FAILED,
                stale,
                check
            ),
            Outcome::Failed(FailureKind::ConditionFailed)
        );
        assert_eq!(
            classify_response(Operation::CasPut, StatusCode::NOT_FOUND, b"{}", check),
            Outcome::Failed(FailureKind::Status4xx)
        );
        let succeeded = br#"{"succeeded":true,"revision":42,"responses":[]}"#;
        let failed = br#"{"succeeded":false,"revision":43,"responses":[],"failed_compare":{"index":0,"key":"a","current":null}}"#;
        assert_eq!(
            classify_response(Operation::Txn, StatusCode::OK, succeeded, check),
            Outcome::Ok
        );
        assert_eq!(
            classify_response(Operation::Txn, StatusCode::OK, failed, check),
            Outcome::Failed(FailureKind::ConditionFailed)
        );
        // A transaction's answer is not a plain write's.
        assert_eq!(
            classify_response(Operation::Txn, StatusCode::OK, PUT_BODY, check),
            Outcome::Failed(FailureKind::BodyMismatch)
        );
        assert_eq!(
            classify_response(Operation::Txn, StatusCode::PAYLOAD_TOO_LARGE, b"{}", check),
            Outcome::Failed(FailureKind::Status4xx)
        );
    }

    #[test]
    fn failure_counts_add_merge_and_total() {
        let mut counts = FailureCounts::default();
        counts.add(FailureKind::Connect);
        counts.add(FailureKind::Timeout);
        counts.add(FailureKind::BodyMismatch);
        counts.add(FailureKind::ConditionFailed);
        let mut merged = counts;
        merged.merge(&counts);
        assert_eq!(merged.connect, 2);
        assert_eq!(merged.condition_failed, 2);
        assert_eq!(merged.total(), 8);
    }

    #[test]
    fn old_reports_without_condition_failures_still_read() {
        let old = r#"{"connect":0,"timeout":0,"io":0,"status_4xx":1,"status_5xx":0,
                      "status_other":0,"body_mismatch":0}"#;
        let counts: FailureCounts = serde_json::from_str(old).unwrap();
        assert_eq!(counts.status_4xx, 1);
        assert_eq!(counts.condition_failed, 0);
    }
}
