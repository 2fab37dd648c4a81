//! Every route, answered as docs/http-api.md says.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::{call, call_with, get, node, put};

#[tokio::test]
async fn the_seed_readme_walkthrough_answers_the_same() {
    let node = node();
    // The seed's members with the seed's values; the extra ones are v1.5's and etcd's.
    let answer = put(&node, "/key/key6", r#"{"value": "myvalue"}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_has(json!({"status": "ok", "id": 1}));
    assert_eq!(
        answer.json(),
        json!({"status": "ok", "id": 1, "key": "key6", "version": 1})
    );
    assert_eq!(
        answer.body,
        r#"{"status":"ok","id":1,"key":"key6","version":1}"#
    );
    assert_eq!(answer.header("content-type"), "application/json");

    let answer = get(&node, "/key/key6").await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.assert_has(json!({"key": "key6", "value": "myvalue"}));
    assert_eq!(
        answer.body,
        r#"{"key":"key6","value":"myvalue","version":1,"mod_revision":1,"create_revision":1}"#
    );
    assert_eq!(answer.header("etag"), "\"1\"");

    let answer = call(&node, Method::DELETE, "/key/key6", "").await;
    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::OK, json!({"status": "ok", "id": 2}))
    );

    let answer = get(&node, "/key/key6").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body, r#"{"detail":"Key not found"}"#);

    let answer = call(&node, Method::DELETE, "/key/key6", "").await;
    assert_eq!(
        (answer.status, answer.detail().as_str()),
        (StatusCode::NOT_FOUND, "Key not found")
    );
    assert_eq!(
        node.state.store.log_status().next_id,
        3,
        "the failed DELETE wrote nothing"
    );
}

/// A PUT's answer is written out by hand (handlers.rs): a key that needs escaping comes back
/// JSON-escaped, byte for byte what serializing the answer as a JSON map gave.
#[tokio::test]
async fn a_put_answer_escapes_the_key_as_json_did() {
    let node = node();
    // A quote, a backslash, control characters (U+0001, newline, tab) and non-ASCII.
    let key = "a\"b\\c\u{1}d\ne\tκ€😀";
    let uri = "/key/a%22b%5Cc%01d%0Ae%09%CE%BA%E2%82%AC%F0%9F%98%80";
    let answer = put(&node, uri, r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        r#"{"status":"ok","id":1,"key":"a\"b\\c\u0001d\ne\tκ€😀","version":1}"#
    );
    let as_a_map = json!({"status": "ok", "id": 1, "key": key, "version": 1}).to_string();
    assert_eq!(answer.body, as_a_map);
    assert_eq!(answer.json()["key"], key);
    assert_eq!(get(&node, uri).await.json()["key"], key);
}

#[tokio::test]
async fn any_json_value_comes_back_as_it_went_in_compacted() {
    let node = node();
    for (sent, stored) in [
        (
            r#"{"b": 1, "a": [true, null, 1.5]}"#,
            r#"{"b":1,"a":[true,null,1.5]}"#,
        ),
        ("null", "null"),
        ("-12", "-12"),
        (r#""with \"quotes\" and ☃""#, r#""with \"quotes\" and ☃""#),
        ("[]", "[]"),
    ] {
        let answer = put(
            &node,
            "/key/v",
            &format!(r#"{{"value": {sent}, "ignored": 1}}"#),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{sent}");
        let answer = get(&node, "/key/v").await;
        let prefix = format!(r#"{{"key":"v","value":{stored},"version":"#);
        assert!(
            answer.body.starts_with(prefix.as_bytes()),
            "{:?}",
            answer.body
        );
    }
}

#[tokio::test]
async fn keys_are_percent_decoded_single_segments() {
    let node = node();
    assert_eq!(
        put(&node, "/key/a%2Fb%20c", r#"{"value": 1}"#).await.status,
        StatusCode::OK
    );
    assert_eq!(
        put(&node, "/key/%CE%BA+", r#"{"value": 2}"#).await.status,
        StatusCode::OK
    );
    assert!(node.state.store.get(b"a/b c").is_some());
    get(&node, "/key/%CE%BA+")
        .await
        .assert_has(json!({"key": "κ+", "value": 2}));
    get(&node, "/key/a%2fb%20c")
        .await
        .assert_has(json!({"key": "a/b c", "value": 1}));
}

fn raw_request(method: Method, uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

fn accepting_raw(uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .header("accept", "application/octet-stream")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn raw_values_are_stored_as_bytes_and_shown_to_json_clients() {
    let node = node();
    let answer = call_with(&node, raw_request(Method::PUT, "/key/bin", b"\x00\xff\x01")).await;
    assert_eq!(
        (answer.status, answer.json()["id"].clone()),
        (StatusCode::OK, json!(1))
    );
    let answer = call_with(&node, raw_request(Method::PUT, "/key/text", b"plain text")).await;
    assert_eq!(answer.status, StatusCode::OK);

    let answer = call_with(&node, accepting_raw("/key/bin")).await;
    assert_eq!(answer.header("content-type"), "application/octet-stream");
    assert_eq!(answer.body, &b"\x00\xff\x01"[..]);

    // To a JSON client: UTF-8 as a string, anything else as base64.
    get(&node, "/key/text")
        .await
        .assert_has(json!({"key": "text", "value": "plain text"}));
    get(&node, "/key/bin")
        .await
        .assert_has(json!({"key": "bin", "value": "AP8B", "encoding": "base64"}));
}

#[tokio::test]
async fn json_values_read_as_octet_stream_are_text_or_compact_json() {
    let node = node();
    put(&node, "/key/s", r#"{"value": "caf\u00e9"}"#).await;
    put(&node, "/key/o", r#"{"value": {"x": [1, 2]}}"#).await;
    assert_eq!(call_with(&node, accepting_raw("/key/s")).await.body, "café");
    assert_eq!(
        call_with(&node, accepting_raw("/key/o")).await.body,
        r#"{"x":[1,2]}"#
    );
}

#[tokio::test]
async fn keys_lists_by_prefix_with_limit_and_cursor() {
    let node = node();
    for key in ["user:2", "user:1", "user:3", "users", "admin"] {
        put(&node, &format!("/key/{key}"), r#"{"value": 0}"#).await;
    }
    assert_eq!(
        get(&node, "/keys?prefix=user%3A").await.json(),
        json!({"keys": ["user:1", "user:2", "user:3"], "count": 3})
    );
    assert_eq!(
        get(&node, "/keys?prefix=user&limit=2").await.json(),
        json!({"keys": ["user:1", "user:2"], "count": 2})
    );
    assert_eq!(
        get(&node, "/keys?prefix=user&after=user:2").await.json(),
        json!({"keys": ["user:3", "users"], "count": 2})
    );
    assert_eq!(get(&node, "/keys").await.json()["count"], json!(5));
    assert_eq!(
        get(&node, "/keys?limit=0").await.json(),
        json!({"keys": [], "count": 0})
    );
}

#[tokio::test]
async fn segments_describe_the_wal() {
    let node = node();
    put(&node, "/key/a", r#"{"value": 1}"#).await;
    let answer = get(&node, "/segments").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["total_segments"], json!(1));
    assert_eq!(
        body["max_segment_size"],
        json!(kv_wal::SEGMENT_BYTES_MAX_DEFAULT)
    );
    let segment = &body["segments"][0];
    assert_eq!(segment["is_active"], json!(true));
    assert_eq!(
        (segment["first_id"].clone(), segment["last_id"].clone()),
        (json!(1), json!(1))
    );
    assert!(segment["size"].as_u64().expect("size") > 0);
    assert_eq!(
        segment["allocated"],
        json!(kv_wal::WalOptions::default().preallocated_segment_bytes())
    );
    assert_eq!(segment["compression"], json!(null));
    assert_eq!(segment["original_size"], segment["size"]);
    assert!(segment["path"]
        .as_str()
        .expect("path")
        .starts_with(&*node.state.store.log_dir().to_string_lossy()));
}

#[tokio::test]
async fn health_reports_role_and_ids() {
    let node = node();
    put(&node, "/key/a", r#"{"value": 1}"#).await;
    let answer = get(&node, "/health").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(
        (body["status"].clone(), body["role"].clone()),
        (json!("ok"), json!("leader"))
    );
    assert_eq!(
        (body["applied_id"].clone(), body["durable_id"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        (body["next_id"].clone(), body["keys"].clone()),
        (json!(2), json!(1))
    );
}

#[tokio::test]
async fn metrics_count_requests_and_show_the_wal() {
    let node = node();
    put(&node, "/key/a", r#"{"value": 1}"#).await;
    get(&node, "/key/a").await;
    get(&node, "/key/missing").await;
    get(&node, "/nowhere").await;
    let answer = get(&node, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.header("content-type").starts_with("text/plain"));
    let text = String::from_utf8(answer.body.to_vec()).expect("UTF-8");
    for line in [
        r#"kvd_http_requests_total{route="/key/{key}",method="PUT",status="200"} 1"#,
        r#"kvd_http_requests_total{route="/key/{key}",method="GET",status="200"} 1"#,
        r#"kvd_http_requests_total{route="/key/{key}",method="GET",status="404"} 1"#,
        r#"kvd_http_requests_total{route="unknown",method="GET",status="404"} 1"#,
        r#"kvd_http_request_duration_seconds_count{route="/key/{key}",method="GET"} 2"#,
        "kvd_store_keys 1",
        "kvd_store_applied_id 1",
        "kvd_wal_last_id 1",
        "kvd_wal_durable_id 1",
        "kvd_wal_records_appended_total 1",
        // The PUT found the log idle: it ran its own commit (the write-group leader).
        "kvd_wal_inline_commits_total 1",
        // Nothing is waiting for the disk.
        "kvd_wal_disk_wait_seconds 0",
        r#"kvd_wal_fsync_batch_records_bucket{le="+Inf"} 1"#,
        r#"kvd_node_info{role="leader"} 1"#,
    ] {
        assert!(
            text.lines().any(|candidate| candidate == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn a_follower_redirects_writes_to_its_leader_and_serves_reads() {
    let node = crate::support::node_with(
        kv_http::HttpOptions::default(),
        kv_http::NodeRole::Follower {
            leader_url: "http://127.0.0.1:8000/".to_owned(),
        },
    );
    let answer = put(&node, "/key/k?x=1", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(answer.header("location"), "http://127.0.0.1:8000/key/k?x=1");
    assert!(answer.detail().contains("http://127.0.0.1:8000"));
    let answer = call(&node, Method::DELETE, "/key/k", "").await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(get(&node, "/key/k").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&node, "/health").await.json()["role"],
        json!("follower")
    );
    assert_eq!(node.state.store.log_status().next_id, 1, "nothing written");
}
