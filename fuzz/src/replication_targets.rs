//! Fuzz target over kv-replication: the fetch protocol decoders, as a follower and a leader
//! meet bytes from the network.
//!
//! This file is the single definition of the target: the cargo-fuzz binary calls it, and
//! kv-replication's test `fuzz_corpus.rs` includes it (`#[path]`) to replay the committed
//! corpus in CI. It may therefore use only `kv_replication`, `kv_wal` and `std`.

use kv_replication::{check_frames, FetchRequest, FetchResponse};

/// Decodes `data` as a fetch request and as a fetch response. Whatever decodes must encode
/// back to the same bytes, and a response's frames go through the follower's checks — none of
/// it may panic or allocate more than the input holds.
pub fn decode_messages(data: &[u8]) {
    if let Ok(request) = FetchRequest::decode(data) {
        assert_eq!(request.encode(), data, "a request re-encodes to its bytes");
        assert!(request.validate().is_ok());
    }
    if let Ok(response) = FetchResponse::decode(data) {
        assert_eq!(
            response.encode(),
            data,
            "a response re-encodes to its bytes"
        );
        if let FetchResponse::Entries { frames, .. } = &response {
            if let Some(Ok(first)) = kv_wal::frame::decode(frames)
                .ok()
                .map(|frame| Ok::<u64, ()>(frame.id))
            {
                let _ = check_frames(frames, first);
            }
            let _ = check_frames(frames, 1);
        }
    }
}

/// Seeds: one of every message kind.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut frames = kv_wal::frame::encode_record(5, b"payload");
    frames.extend(kv_wal::frame::encode_record(6, b"next"));
    vec![
        FetchRequest {
            cluster_id: 7,
            node_id: 1,
            leader_epoch: 2,
            next_id: 11,
            last_epoch: 2,
            durable_id: 10,
            commit_id: 9,
            bytes_max: 1 << 20,
            wait_ms: 500,
        }
        .encode(),
        FetchResponse::Entries {
            cluster_id: 7,
            leader_epoch: 2,
            commit_id: 4,
            first_id: 1,
            last_id: 6,
            frames,
        }
        .encode(),
        FetchResponse::Diverged {
            cluster_id: 7,
            leader_epoch: 3,
            truncate_after: 4,
        }
        .encode(),
        FetchResponse::SnapshotNeeded {
            cluster_id: 7,
            leader_epoch: 3,
            first_id: 100,
        }
        .encode(),
        FetchResponse::NotLeader {
            leader_epoch: 3,
            leader_url: Some("http://127.0.0.1:8000".to_owned()),
        }
        .encode(),
        FetchResponse::ClusterMismatch {
            leader_cluster_id: 9,
            leader_epoch: 3,
        }
        .encode(),
    ]
}
