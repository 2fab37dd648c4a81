//! Versions, compare-and-set, history, transactions and idempotent requests over HTTP: every
//! new route and every error status it can answer, as docs/http-api.md describes them.

use http::{Method, StatusCode};
use kv_http::{HttpOptions, NodeRole};
use kv_store::{HistoryOptions, RetentionOptions, StoreOptions};
use serde_json::json;

use crate::support::{
    call, call_with_headers, footprint, get, node, node_with, node_with_snapshots, node_with_store,
    put, Node,
};

async fn put_with(
    node: &Node,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> crate::support::Answer {
    call_with_headers(node, Method::PUT, uri, headers, body).await
}

async fn post(node: &Node, uri: &str, body: &str) -> crate::support::Answer {
    call(node, Method::POST, uri, body).await
}

#[tokio::test]
async fn reads_carry_versions_and_revisions_and_an_etag() {
    let node = node();
    put(&node, "/key/a", r#"{"value": 1}"#).await;
    put(&node, "/key/b", r#"{"value": 2}"#).await;
    put(&node, "/key/a", r#"{"value": 3}"#).await;
    let answer = get(&node, "/key/a").await;
    assert_eq!(
        answer.json(),
        json!({"key": "a", "value": 3, "version": 2, "mod_revision": 3, "create_revision": 1})
    );
    assert_eq!(answer.header("etag"), "\"3\"");
    // A delete ends the versions: created again, the key starts over.
    call(&node, Method::DELETE, "/key/a", "").await;
    let answer = put(&node, "/key/a", r#"{"value": 4}"#).await;
    assert_eq!(
        answer.json(),
        json!({"status": "ok", "id": 5, "key": "a", "version": 1})
    );
    assert_eq!(answer.header("etag"), "\"5\"");
    get(&node, "/key/a")
        .await
        .assert_has(json!({"version": 1, "mod_revision": 5, "create_revision": 5}));
}

#[tokio::test]
async fn if_match_and_if_none_match_decide_at_apply_time() {
    let node = node();
    // If-None-Match: * creates only if absent.
    let created = put_with(
        &node,
        "/key/k",
        &[("if-none-match", "*")],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    let again = put_with(
        &node,
        "/key/k",
        &[("if-none-match", "*")],
        r#"{"value": 2}"#,
    )
    .await;
    assert_eq!(again.status, StatusCode::PRECONDITION_FAILED);
    again.assert_has(json!({"mod_revision": 1, "version": 1, "revision": 2}));
    assert_eq!(again.header("etag"), "\"1\"");
    assert!(
        again.detail().contains("If-None-Match"),
        "{}",
        again.detail()
    );

    // If-Match with the current ETag applies; with a stale one it is 412 with the current.
    let answer = put_with(&node, "/key/k", &[("if-match", "\"1\"")], r#"{"value": 3}"#).await;
    assert_eq!(
        answer.json(),
        json!({"status": "ok", "id": 3, "key": "k", "version": 2})
    );
    let stale = put_with(&node, "/key/k", &[("if-match", "\"1\"")], r#"{"value": 4}"#).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    stale.assert_has(json!({"mod_revision": 3, "version": 2, "revision": 4}));
    get(&node, "/key/k")
        .await
        .assert_has(json!({"value": 3, "version": 2}));

    // If-Match: * needs the key to exist.
    let absent = put_with(&node, "/key/none", &[("if-match", "*")], r#"{"value": 1}"#).await;
    assert_eq!(absent.status, StatusCode::PRECONDITION_FAILED);
    absent.assert_has(json!({"mod_revision": null, "version": null}));
    assert_eq!(get(&node, "/key/none").await.status, StatusCode::NOT_FOUND);

    // Raw values work the same.
    let raw = put_with(
        &node,
        "/key/k",
        &[
            ("if-match", "\"3\""),
            ("content-type", "application/octet-stream"),
        ],
        "raw",
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK, "{:?}", raw.body);
    get(&node, "/key/k")
        .await
        .assert_has(json!({"value": "raw", "version": 3}));

    // DELETE with If-Match.
    let stale = call_with_headers(&node, Method::DELETE, "/key/k", &[("if-match", "3")], "").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let deleted = call_with_headers(
        &node,
        Method::DELETE,
        "/key/k",
        &[("if-match", "\"6\"")],
        "",
    )
    .await;
    assert_eq!(deleted.json(), json!({"status": "ok", "id": 8}));
    assert_eq!(get(&node, "/key/k").await.status, StatusCode::NOT_FOUND);

    // A malformed condition is refused before anything is written.
    let before = footprint(&node);
    for bad in ["\"1\", \"2\"", "\"abc\"", ""] {
        let answer = put_with(&node, "/key/k", &[("if-match", bad)], r#"{"value": 1}"#).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}");
        // It names the header it is about (it said "invalid query" before).
        let detail = answer.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            detail.starts_with("invalid header: if-match must be *"),
            "{bad:?}: {detail}"
        );
    }
    assert_eq!(footprint(&node), before);

    // "0" is no key's tag (RFC 9110): If-Match "0" never holds, not even on an absent key
    // (it created one before); If-None-Match "0" always holds, on an absent key too (it was
    // 412 there before).
    let zero = put_with(
        &node,
        "/key/none",
        &[("if-match", "\"0\"")],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(zero.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(get(&node, "/key/none").await.status, StatusCode::NOT_FOUND);
    let zero = put_with(&node, "/key/k", &[("if-match", "0")], r#"{"value": 1}"#).await;
    assert_eq!(zero.status, StatusCode::PRECONDITION_FAILED);
    let zero = put_with(
        &node,
        "/key/zero",
        &[("if-none-match", "\"0\"")],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(zero.status, StatusCode::OK, "{:?}", zero.body);
    let zero = put_with(
        &node,
        "/key/zero",
        &[("if-none-match", "\"0\"")],
        r#"{"value": 2}"#,
    )
    .await;
    assert_eq!(zero.status, StatusCode::OK, "{:?}", zero.body);
    call(&node, Method::DELETE, "/key/zero", "").await;

    // If-Match compares strongly: a weak tag matches nothing, not even the current
    // revision's (it was taken as the strong tag before); If-None-Match compares weakly, so
    // W/"N" is "N" there.
    let current = put(&node, "/key/weak", r#"{"value": 1}"#).await.json()["id"].clone();
    let weak_tag = format!("W/\"{current}\"");
    for header in ["if-match", "if-none-match"] {
        let weak = put_with(
            &node,
            "/key/weak",
            &[(header, weak_tag.as_str())],
            r#"{"value": 2}"#,
        )
        .await;
        assert_eq!(
            weak.status,
            StatusCode::PRECONDITION_FAILED,
            "{header}: {weak_tag}"
        );
        weak.assert_has(json!({"mod_revision": current, "version": 1}));
    }
    let strong = format!("\"{current}\"");
    let answer = put_with(
        &node,
        "/key/weak",
        &[("if-match", strong.as_str())],
        r#"{"value": 3}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn the_v1_5_version_body_conflicts_when_stale() {
    let node = node();
    // A new key applies whatever the version (it starts at 1).
    let answer = put(
        &node,
        "/key/config",
        r#"{"value": "initial-setting", "version": 5}"#,
    )
    .await;
    assert_eq!(
        answer.json(),
        json!({"status": "ok", "id": 1, "key": "config", "version": 1})
    );
    let answer = put(&node, "/key/config", r#"{"value": "updated-setting"}"#).await;
    assert_eq!(answer.json()["version"], json!(2));
    let conflict = put(
        &node,
        "/key/config",
        r#"{"value": "conflict-value", "version": 1}"#,
    )
    .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(
        conflict.json(),
        json!({"detail": "Version conflict: provided version 1 is outdated", "current_version": 2})
    );
    let equal = put(&node, "/key/config", r#"{"value": "x", "version": 2}"#).await;
    assert_eq!(equal.status, StatusCode::CONFLICT);
    let newer = put(&node, "/key/config", r#"{"value": "newer", "version": 3}"#).await;
    assert_eq!(newer.json()["version"], json!(3));
    let bad = put(&node, "/key/config", r#"{"value": "x", "version": -1}"#).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn history_and_versions_answer_in_the_original_shapes() {
    let node = node();
    put(&node, "/key/config", r#"{"value": "initial-setting"}"#).await;
    put(&node, "/key/other", r#"{"value": 0}"#).await;
    put(&node, "/key/config", r#"{"value": "updated-setting"}"#).await;
    let answer = get(&node, "/key/config?version=1").await;
    assert_eq!(
        answer.json(),
        json!({"key": "config", "value": "initial-setting", "version": 1, "mod_revision": 1})
    );
    let answer = get(&node, "/key/config/history").await;
    assert_eq!(
        answer.json(),
        json!({"key": "config", "versions": [1, 2], "history": [
            {"version": 1, "value": "initial-setting", "mod_revision": 1},
            {"version": 2, "value": "updated-setting", "mod_revision": 3}],
            "latest_version": 2, "compacted": false})
    );
    let answer = get(&node, "/key/config/versions").await;
    assert_eq!(
        answer.json(),
        json!({"key": "config", "versions": [1, 2], "latest_version": 2, "compacted": false})
    );
    let limited = get(&node, "/key/config/versions?limit=1").await;
    assert_eq!(limited.json()["versions"], json!([2]));
    for missing in [
        "/key/config?version=3",
        "/key/config?version=0",
        "/key/nope?version=1",
    ] {
        assert_eq!(
            get(&node, missing).await.status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }
    for missing in ["/key/nope/history", "/key/nope/versions"] {
        assert_eq!(
            get(&node, missing).await.status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }
    assert_eq!(
        get(&node, "/key/config/history?limit=x").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&node, "/key/config?version=x").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_version_past_the_retention_is_410() {
    let store_options = StoreOptions {
        retention: RetentionOptions {
            history: HistoryOptions {
                revisions_max: 2,
                bytes_max: u64::MAX,
            },
            ..RetentionOptions::default()
        },
        ..StoreOptions::default()
    };
    let node = node_with_store(store_options, HttpOptions::default(), NodeRole::Leader);
    for value in 1..=5 {
        put(&node, "/key/k", &format!(r#"{{"value": {value}}}"#)).await;
    }
    let gone = get(&node, "/key/k?version=1").await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(
        gone.json(),
        json!({"detail": "version 1 is compacted: the oldest version kept is 3 (latest 5)",
               "oldest_available_version": 3, "latest_version": 5})
    );
    get(&node, "/key/k?version=3")
        .await
        .assert_has(json!({"value": 3}));
    get(&node, "/key/k/versions")
        .await
        .assert_has(json!({"versions": [3, 4, 5], "compacted": true}));
}

#[tokio::test]
async fn transactions_answer_their_verdict_and_responses() {
    let node = node();
    put(&node, "/key/a", r#"{"value": 10}"#).await;
    put(&node, "/key/b", r#"{"value": 0}"#).await;
    // Move 3 from a to b if a is still at version 1.
    let transfer = r#"{
        "compare": [{"key": "a", "target": "version", "result": "=", "version": 1}],
        "success": [{"put": {"key": "a", "value": 7}}, {"put": {"key": "b", "value": 3}},
                    {"range": {"prefix": "", "limit": 1}}, {"get": {"key": "nope"}}],
        "failure": [{"get": {"key": "a"}}]
    }"#;
    let answer = post(&node, "/txn", transfer).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        json!({"succeeded": true, "revision": 3, "responses": [
            {"put": {"key": "a", "version": 2, "mod_revision": 3, "create_revision": 1}},
            {"put": {"key": "b", "version": 2, "mod_revision": 3, "create_revision": 2}},
            {"range": {"prefix": "", "kvs": [{"key": "a", "found": true, "value": 7,
                "version": 2, "mod_revision": 3, "create_revision": 1}], "count": 1, "more": true}},
            {"get": {"key": "nope", "found": false}}]})
    );
    // The same transaction again fails its compare and runs the failure branch.
    let answer = post(&node, "/txn", transfer).await;
    assert_eq!(
        answer.json(),
        json!({"succeeded": false, "revision": 4, "responses": [
            {"get": {"key": "a", "found": true, "value": 7, "version": 2, "mod_revision": 3,
                     "create_revision": 1}}],
            "failed_compare": {"index": 0, "key": "a",
                "current": {"version": 2, "mod_revision": 3, "create_revision": 1}}})
    );
    // A compare on the value of a missing key is false; deletes say what they removed.
    let answer = post(
        &node,
        "/txn",
        r#"{"compare": [{"key": "nope", "target": "value", "result": "!=", "value": 1}],
            "failure": [{"delete": {"key": "b"}}, {"delete": {"key": "nope"}}]}"#,
    )
    .await;
    assert_eq!(
        answer.json(),
        json!({"succeeded": false, "revision": 5, "responses": [
            {"delete": {"key": "b", "deleted": 1}}, {"delete": {"key": "nope", "deleted": 0}}],
            "failed_compare": {"index": 0, "key": "nope", "current": null}})
    );
    assert_eq!(get(&node, "/key/b").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_transactions_are_refused_unwritten() {
    let node = node();
    let before = footprint(&node);
    let writes_twice =
        r#"{"success": [{"put": {"key": "a", "value": 1}}, {"delete": {"key": "a"}}]}"#;
    for (body, status) in [
        ("{", StatusCode::BAD_REQUEST),
        (r#"{"compare": [{"key": "a"}]}"#, StatusCode::BAD_REQUEST),
        (writes_twice, StatusCode::BAD_REQUEST),
        (
            r#"{"success": [{"range": {"limit": 10001}}]}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let answer = post(&node, "/txn", body).await;
        assert_eq!(answer.status, status, "{body}");
    }
    // A compare has one operand, its target's: another target's was ignored before, and a
    // missing one was called "not a non-negative integer".
    for (compare, detail) in [
        (
            r#"{"key": "a", "target": "mod_revision", "result": "=", "version": 1, "mod_revision": 2}"#,
            r#""version" is no operand of the target "mod_revision""#,
        ),
        (
            r#"{"key": "a", "target": "value", "result": "=", "value": 1, "create_revision": 2}"#,
            r#""create_revision" is no operand of the target "value""#,
        ),
        (
            r#"{"key": "a", "target": "mod_revision", "result": "="}"#,
            r#"the target "mod_revision" needs its operand "mod_revision""#,
        ),
    ] {
        let answer = post(&node, "/txn", &format!(r#"{{"compare": [{compare}]}}"#)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{compare}");
        assert!(
            answer.detail().contains(detail),
            "{compare}: {}",
            answer.detail()
        );
    }
    let ops: Vec<String> = (0..129)
        .map(|index| format!(r#"{{"get": {{"key": "k{index}"}}}}"#))
        .collect();
    let too_many = format!(r#"{{"success": [{}]}}"#, ops.join(","));
    assert_eq!(
        post(&node, "/txn", &too_many).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let small = node_with(
        HttpOptions {
            body_bytes_max: 64,
            ..HttpOptions::default()
        },
        NodeRole::Leader,
    );
    assert_eq!(
        post(&small, "/txn", &too_many).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let answer = get(&node, "/txn").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.header("allow"), "POST");
    assert_eq!(footprint(&node), before, "nothing written");
}

#[tokio::test]
async fn a_retried_request_gets_the_first_answer_once() {
    let node = node();
    let uri = "/key/testkey?client_id=client1&request_id=req123";
    let first = put(&node, uri, r#"{"value": "testvalue"}"#).await;
    assert_eq!(
        first.json(),
        json!({"status": "ok", "id": 1, "key": "testkey", "version": 1})
    );
    let retry = put(&node, uri, r#"{"value": "testvalue"}"#).await;
    assert_eq!(retry.json(), first.json());
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(node.state.store.log_status().next_id, 2, "applied once");

    // The same ids for another request: 422, nothing written.
    for (method, body) in [(Method::PUT, r#"{"value": "other"}"#), (Method::DELETE, "")] {
        let answer = call(&node, method, uri, body).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        answer.assert_has(json!({"id": 1}));
    }
    assert_eq!(node.state.store.log_status().next_id, 2);

    // An Idempotency-Key header works the same; a failed CAS is remembered as failed.
    let headers = [("idempotency-key", "k-1"), ("if-match", "\"9\"")];
    let failed = put_with(&node, "/key/testkey", &headers, r#"{"value": 2}"#).await;
    assert_eq!(failed.status, StatusCode::PRECONDITION_FAILED);
    let again = put_with(&node, "/key/testkey", &headers, r#"{"value": 2}"#).await;
    assert_eq!((again.status, again.json()), (failed.status, failed.json()));
    assert_eq!(node.state.store.log_status().next_id, 3);

    // Transactions too.
    let txn = r#"{"success": [{"put": {"key": "t", "value": 1}}, {"get": {"key": "t"}}]}"#;
    let first = post(&node, "/txn?client_id=c&request_id=t1", txn).await;
    let retry = post(&node, "/txn?client_id=c&request_id=t1", txn).await;
    assert_eq!(retry.json()["revision"], first.json()["revision"]);
    assert_eq!(retry.json()["responses"][0], first.json()["responses"][0]);
    assert_eq!(retry.json()["responses"][1], json!({"elided": true}));

    // Bad ids are 400.
    for bad in [
        "/key/k?client_id=c",
        "/key/k?request_id=r",
        "/key/k?client_id=&request_id=r",
    ] {
        assert_eq!(
            put(&node, bad, r#"{"value": 1}"#).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let both = put_with(
        &node,
        "/key/k?client_id=c&request_id=r",
        &[("idempotency-key", "x")],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    // Two Idempotency-Key headers are 400, as a parameter given twice (before, the first was
    // taken and the second ignored).
    let next_id = node.state.store.log_status().next_id;
    let twice = put_with(
        &node,
        "/key/k",
        &[("idempotency-key", "zz1"), ("idempotency-key", "zz2")],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert!(
        twice
            .detail()
            .contains("Idempotency-Key is given more than once"),
        "{}",
        twice.detail()
    );
    assert_eq!(
        node.state.store.log_status().next_id,
        next_id,
        "nothing written"
    );
}

#[tokio::test]
async fn a_retried_request_whose_write_failed_is_answered_as_replayed() {
    let node = node();
    put(&node, "/key/k", r#"{"value": 1}"#).await;
    // 412 (If-Match), 409 (the v1.5 version) and a conditional DELETE's 404 are decided by the
    // log: a retry gets the same answer, marked replayed like a retried success.
    let stale = [("idempotency-key", "k-412"), ("if-match", "\"99\"")];
    let version = "/key/k?client_id=c&request_id=r-409";
    let absent = [("idempotency-key", "k-404"), ("if-none-match", "*")];
    for (round, replayed) in [(0, None), (1, Some("true"))] {
        let answers = [
            put_with(&node, "/key/k", &stale, r#"{"value": 2}"#).await,
            put(&node, version, r#"{"value": 2, "version": 1}"#).await,
            call_with_headers(&node, Method::DELETE, "/key/gone", &absent, "").await,
        ];
        let statuses = answers.each_ref().map(|answer| answer.status);
        assert_eq!(
            statuses,
            [
                StatusCode::PRECONDITION_FAILED,
                StatusCode::CONFLICT,
                StatusCode::NOT_FOUND
            ]
        );
        for answer in &answers {
            let header = answer.headers.get("idempotent-replayed");
            let header = header.map(|value| value.to_str().expect("ASCII"));
            assert_eq!(header, replayed, "round {round}: a {}", answer.status);
        }
    }
    assert_eq!(
        node.state.store.log_status().next_id,
        5,
        "each applied once"
    );
    // The request status of the 409 does not invent the version the request gave.
    let status = get(&node, "/request_status?client_id=c&request_id=r-409").await;
    assert_eq!(
        status.json()["result"],
        json!({"detail": "Version conflict: the provided version is outdated",
               "current_version": 1})
    );
}

#[tokio::test]
async fn request_status_and_deduplication_stats_answer_in_the_original_shapes() {
    let node = node();
    put(
        &node,
        "/key/testkey?client_id=client1&request_id=req123",
        r#"{"value": "v"}"#,
    )
    .await;
    put(
        &node,
        "/key/testkey?client_id=client1&request_id=req123",
        r#"{"value": "v"}"#,
    )
    .await;
    call(
        &node,
        Method::DELETE,
        "/key/testkey?client_id=client1&request_id=req123",
        "",
    )
    .await;
    let answer = get(&node, "/request_status?client_id=client1&request_id=req123").await;
    assert_eq!(
        answer.json(),
        json!({"processed": true, "status_code": 200, "id": 1, "operation": "SET",
               "result": {"status": "ok", "id": 1, "key": "testkey", "version": 1}})
    );
    let answer = get(
        &node,
        "/request_status?client_id=client1&request_id=req123&operation=DELETE",
    )
    .await;
    assert_eq!(answer.json(), json!({"processed": false}));
    let answer = get(&node, "/request_status?client_id=client1&request_id=nope").await;
    assert_eq!(answer.json(), json!({"processed": false}));
    assert_eq!(
        get(&node, "/request_status?client_id=client1").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(
            &node,
            "/request_status?client_id=c&request_id=r&operation=FLY"
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    // A bad idempotency_key is a bad query parameter (it is the header's key, given here).
    for bad in [
        "/request_status?idempotency_key=%FF",
        "/request_status?idempotency_key=",
        "/request_status?idempotency_key=k&client_id=c&request_id=r",
    ] {
        let answer = get(&node, bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            answer.detail().starts_with("invalid query: "),
            "{bad}: {}",
            answer.detail()
        );
    }
    let answer = get(&node, "/deduplication_stats").await;
    assert_eq!(
        answer.json(),
        json!({"service_name": "leader", "current_cache_size": 1, "unique_request_ids": 1,
               "total_client_count": 1, "total_requests_cached": 1,
               "total_duplicates_detected": 1, "same_operation_duplicates": 1,
               "different_operation_duplicates": 1, "total_cache_cleanups": 0,
               "entries_pruned": 0, "max_entries": 100000, "max_age_seconds": 3600})
    );
}

#[tokio::test]
async fn a_follower_redirects_transactions_and_serves_history() {
    let node = node_with(
        HttpOptions::default(),
        NodeRole::Follower {
            leader_url: "http://127.0.0.1:8000".to_owned(),
        },
    );
    let answer = post(&node, "/txn?client_id=c&request_id=1", "{}").await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        answer.header("location"),
        "http://127.0.0.1:8000/txn?client_id=c&request_id=1"
    );
    let answer = put_with(&node, "/key/k", &[("if-match", "*")], r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        get(&node, "/key/k/history").await.status,
        StatusCode::NOT_FOUND
    );
    get(&node, "/deduplication_stats")
        .await
        .assert_has(json!({"service_name": "follower"}));
}

#[tokio::test]
async fn compaction_endpoints_answer_in_the_original_shapes() {
    let node = node_with_snapshots();
    let answer = get(&node, "/compaction/status").await;
    answer.assert_has(json!({"enabled": true, "compaction_interval_seconds": 0,
        "min_compaction_interval_seconds": 0, "last_compaction": null,
        "compaction_running": false, "compaction_history": [], "snapshots_written": 0}));
    for index in 0..5 {
        put(&node, &format!("/key/k{index}"), r#"{"value": 1}"#).await;
    }
    let answer = post(&node, "/compaction/run", "").await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_has(json!({"status": "success", "segments_compacted": 0, "entries_removed": 0}));
    assert_eq!(answer.json()["snapshot"]["applied_id"], json!(5));
    let status = get(&node, "/compaction/status").await.json();
    assert_eq!(
        status["compaction_history"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(status["compaction_history"][0]["snapshot_id"], json!(5));
    assert_eq!(
        status["last_compaction"],
        status["compaction_history"][0]["timestamp"]
    );
    assert!(status["last_compaction"]
        .as_str()
        .is_some_and(|text| text.ends_with('Z')));

    let answer = post(
        &node,
        "/compaction/configure?enabled=false&interval=7200",
        "",
    )
    .await;
    assert_eq!(
        answer.json(),
        json!({"status": "success", "changes": {"enabled": false, "interval": 7200}})
    );
    get(&node, "/compaction/status")
        .await
        .assert_has(json!({"enabled": false, "compaction_interval_seconds": 7200}));
    assert!(
        !node.state.node.snapshot_due(),
        "automatic snapshots are off"
    );
    let answer = post(&node, "/compaction/configure?interval=0", "").await;
    assert_eq!(
        answer.json(),
        json!({"status": "success", "changes": {"interval": 0}})
    );
    for bad in [
        "/compaction/configure?enabled=maybe",
        "/compaction/configure?interval=-1",
        "/compaction/run?force=x",
    ] {
        assert_eq!(
            post(&node, bad, "").await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        get(&node, "/compaction/run").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn the_time_trigger_makes_a_snapshot_due() {
    let node = node_with_snapshots();
    put(&node, "/key/k", r#"{"value": 1}"#).await;
    assert!(
        !node.state.node.snapshot_due(),
        "one entry is not due by count or size"
    );
    post(&node, "/compaction/configure?interval=1", "").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node.state.node.snapshot_due() {
        assert!(
            std::time::Instant::now() < deadline,
            "not due after the interval"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    post(&node, "/compaction/run", "").await;
    assert!(
        !node.state.node.snapshot_due(),
        "nothing applied since the snapshot"
    );
}

#[tokio::test]
async fn compaction_run_without_snapshots_is_an_error() {
    let node = node();
    let answer = post(&node, "/compaction/run", "").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_snapshot_chunk_offset_no_file_can_reach_is_a_bad_query() {
    let node = node_with_snapshots();
    put(&node, "/key/k", r#"{"value": 1}"#).await;
    let snapshot = post(&node, "/admin/snapshot", "").await.json();
    let applied_id = snapshot["snapshot"]["applied_id"].as_u64().unwrap();
    let size = snapshot["snapshot"]["size_bytes"].as_u64().unwrap();
    let chunk = |offset: u64| format!("/replication/snapshot/{applied_id}?offset={offset}");
    // Past the end: an empty chunk, as for any offset a file of this size can have.
    let past = get(&node, &chunk(size + 1)).await;
    assert_eq!((past.status, past.body.len()), (StatusCode::OK, 0));
    // Also at the very end of the file offsets (a read from 2^63 - 8192 on asked for an end
    // past them: "Invalid argument", a 500, before).
    for offset in [i64::MAX as u64 - 8192, i64::MAX as u64 - 1, i64::MAX as u64] {
        let last = get(&node, &chunk(offset)).await;
        assert_eq!(
            (last.status, last.body.len()),
            (StatusCode::OK, 0),
            "offset {offset}: {:?}",
            last.body
        );
    }
    // A chunk in the middle still reads what is there, no more than asked.
    let part = get(&node, &format!("{}&len=3", chunk(1))).await;
    assert_eq!((part.status, part.body.len()), (StatusCode::OK, 3));
    // Past what a file offset can be (i64::MAX): 400 naming the limit, not a 500 from the read.
    let answer = get(&node, &chunk(u64::MAX)).await;
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "{}",
        answer.detail()
    );
    assert!(answer.detail().contains("offset"), "{}", answer.detail());
}

#[tokio::test]
async fn integers_past_64_bits_are_stored_digit_for_digit() {
    let node = node();
    let big = "123456789012345678901234567890";
    let answer = put(&node, "/key/big", &format!(r#"{{"value": {big}}}"#)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let read = get(&node, "/key/big").await;
    assert!(
        std::str::from_utf8(&read.body)
            .unwrap()
            .contains(&format!(r#""value":{big}"#)),
        "{:?}",
        read.body
    );
    // A transaction compares and writes the same digits.
    let txn = format!(
        r#"{{"compare": [{{"key": "big", "target": "value", "result": "=", "value": {big}}}],
             "success": [{{"put": {{"key": "copy", "value": [{big}, 1.5]}}}}]}}"#
    );
    let answer = post(&node, "/txn", &txn).await;
    assert_eq!(answer.json()["succeeded"], json!(true), "{}", answer.json());
    let read = get(&node, "/key/copy").await;
    assert!(
        std::str::from_utf8(&read.body)
            .unwrap()
            .contains(&format!(r#""value":[{big},1.5]"#)),
        "{:?}",
        read.body
    );
}

/// RFC 9110's conditional GET: `If-None-Match` with the current ETag (or `*` on a present key)
/// is 304 with the ETag and no body; an `If-Match` that does not hold is 412 naming why; a bad
/// tag is 400; neither applies to a `?version=` read (400). `POST /txn` refuses both headers
/// (its conditions are its compares). Before, every one was ignored: 200 with the body, and a
/// transaction sent with a failing `If-Match` was applied (found by a new user).
#[tokio::test]
async fn reads_honour_their_conditions_and_transactions_refuse_them() {
    let node = node();
    put(&node, "/key/k", r#"{"value": 1}"#).await;
    let get_with = |headers: &'static [(&'static str, &'static str)], uri: &'static str| {
        call_with_headers(&node, Method::GET, uri, headers, "")
    };
    let unchanged = get_with(&[("if-none-match", "\"1\"")], "/key/k").await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.header("etag"), "\"1\"");
    assert!(unchanged.body.is_empty());
    let any = get_with(&[("if-none-match", "*")], "/key/k").await;
    assert_eq!(any.status, StatusCode::NOT_MODIFIED);
    let changed = get_with(&[("if-none-match", "\"7\"")], "/key/k").await;
    assert_eq!(changed.status, StatusCode::OK);
    changed.assert_has(json!({"value": 1}));
    let held = get_with(&[("if-match", "\"1\"")], "/key/k").await;
    assert_eq!(held.status, StatusCode::OK);
    let stale = get_with(&[("if-match", "\"7\"")], "/key/k").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.header("etag"), "\"1\"");
    assert!(
        stale.detail().contains("mod_revision 7"),
        "{}",
        stale.detail()
    );
    let absent = get_with(&[("if-match", "*")], "/key/absent").await;
    assert_eq!(absent.status, StatusCode::PRECONDITION_FAILED);
    let absent = get_with(&[("if-none-match", "*")], "/key/absent").await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND);
    let bad = get_with(&[("if-match", "garbage")], "/key/k").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let versioned = get_with(&[("if-none-match", "\"1\"")], "/key/k?version=1").await;
    assert_eq!(versioned.status, StatusCode::BAD_REQUEST);

    let txn = r#"{"compare": [], "success": [{"put": {"key": "k", "value": 2}}]}"#;
    let refused =
        call_with_headers(&node, Method::POST, "/txn", &[("if-match", "\"9\"")], txn).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.detail().contains("compare"), "{}", refused.detail());
    get(&node, "/key/k")
        .await
        .assert_has(json!({"value": 1, "version": 1}));
}
