//! The original project's README, step by step, against the real binary.

use serde_json::json;

use crate::harness::{seed_members, Kvd};

#[test]
fn the_seed_readme_curl_flow_works_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    // MAX_SEGMENT_SIZE in bytes, as the original project reads it.
    let kvd = Kvd::start(&data_dir, &[], &[("MAX_SEGMENT_SIZE", "1024")]);

    // curl -X PUT "http://localhost:8000/key/key6" -H "Content-Type: application/json" -d '{"value": "myvalue"}'
    // The seed's members keep the seed's values; later releases' members come after them. The
    // ids follow the leader's own first entry of its epoch (its no-op, id 1), so the seed's
    // ids are one lower (the README says ids differ).
    let (status, body) = kvd.json("PUT", "/key/key6", Some(r#"{"value": "myvalue"}"#));
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    let first = body["id"].as_u64().expect("id");
    assert_eq!(
        body,
        json!({"status": "ok", "id": first, "key": "key6", "version": 1})
    );
    // curl "http://localhost:8000/key/key6"
    let answer = kvd.request("GET", "/key/key6", None);
    assert_eq!(answer.status, 200);
    let seed_answer = br#"{"key":"key6","value":"myvalue""#;
    assert!(answer.body.starts_with(seed_answer), "{:?}", answer.body);
    assert_eq!(
        seed_members(answer.json()),
        json!({"key": "key6", "value": "myvalue"})
    );
    // curl -X DELETE "http://localhost:8000/key/key6"
    assert_eq!(
        kvd.json("DELETE", "/key/key6", None),
        (200, json!({"status": "ok", "id": first + 1}))
    );
    // curl "http://localhost:8000/key/key6"
    let answer = kvd.request("GET", "/key/key6", None);
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (404, &br#"{"detail":"Key not found"}"#[..])
    );

    // Enough writes to roll 1 KiB segments; then curl http://localhost:8000/segments
    for index in 0..40 {
        let (status, _) = kvd.json(
            "PUT",
            &format!("/key/key{index}"),
            Some(r#"{"value": "myvalue"}"#),
        );
        assert_eq!(status, 200);
    }
    let (status, segments) = kvd.json("GET", "/segments", None);
    assert_eq!(status, 200);
    assert_eq!(segments["max_segment_size"], json!(1024));
    let list = segments["segments"].as_array().expect("segments");
    assert!(list.len() >= 2, "segments rolled: {segments}");
    assert_eq!(segments["total_segments"], json!(list.len()));
    assert_eq!(
        list.iter()
            .filter(|segment| segment["is_active"] == json!(true))
            .count(),
        1
    );
    assert_eq!(list.last().expect("active")["is_active"], json!(true));
    for segment in list {
        let path = segment["path"].as_str().expect("path");
        assert!(
            path.starts_with(data_dir.to_str().expect("UTF-8")),
            "{path}"
        );
        assert!(std::path::Path::new(path).exists(), "{path}");
        assert!(segment["size"].as_u64().expect("size") > 0);
    }
    assert_eq!(list.last().expect("active")["last_id"], json!(first + 41));

    let (status, health) = kvd.json("GET", "/health", None);
    assert_eq!(
        (status, health["status"].clone(), health["keys"].clone()),
        (200, json!("ok"), json!(40))
    );
    let metrics = kvd.request("GET", "/metrics", None);
    let text = String::from_utf8(metrics.body).expect("UTF-8");
    let appended = format!("kvd_wal_records_appended_total {}", first + 41);
    assert!(text.contains(&appended), "{text}");
}

#[test]
fn raw_values_and_odd_keys_round_trip_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kvd = Kvd::start(&dir.path().join("leader"), &[], &[]);
    let answer = crate::harness::request(
        kvd.address,
        "PUT",
        "/key/dir%2Ffile%20name",
        &[("Content-Type", "application/octet-stream")],
        Some(b"\x00\x01binary"),
    )
    .expect("put raw");
    assert_eq!(answer.status, 200);
    let answer = crate::harness::request(
        kvd.address,
        "GET",
        "/key/dir%2Ffile%20name",
        &[("Accept", "application/octet-stream")],
        None,
    )
    .expect("get raw");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"\x00\x01binary"[..])
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/octet-stream")
    );
    let (status, keys) = kvd.json("GET", "/keys?prefix=dir%2F", None);
    assert_eq!(
        (status, keys),
        (200, json!({"keys": ["dir/file name"], "count": 1}))
    );
    let (status, body) = kvd.json("PUT", "/key/k", Some(r#"{"value": 1} trailing"#));
    assert_eq!(status, 400, "{body}");
}
