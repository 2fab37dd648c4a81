//! Writes the seed corpus into `fuzz/corpus/<target>/`: real frames, real WAL directory images
//! (clean, rolled, torn by a simulated power cut) and real HTTP requests, for the fuzzers to
//! start from and for CI to replay. Run from `fuzz/`: `cargo run --example seed_corpus`.

use std::path::Path;
use std::sync::Arc;

use kv_wal::frame::encode_record;
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{SegmentCodec, SyncPolicy, Wal, WalOptions};
use kvd_fuzz::wal_targets::{encode_directory_image, IMAGE_DIR, IMAGE_SEGMENT_BYTES_MAX};

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn log_image(records: u64, record_bytes: usize, crash: Option<CrashMode>) -> Vec<u8> {
    compressed_log_image(records, record_bytes, crash, None)
}

fn compressed_log_image(
    records: u64,
    record_bytes: usize,
    crash: Option<CrashMode>,
    codec: Option<SegmentCodec>,
) -> Vec<u8> {
    let fs = SimFs::new();
    let options = WalOptions {
        segment_bytes_max: IMAGE_SEGMENT_BYTES_MAX,
        sync_policy: SyncPolicy::Never,
        compress_sealed_segments: codec,
        file_system: Arc::new(fs.clone()),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(IMAGE_DIR, options).expect("open");
    for id in 1..=records {
        let payload = vec![b'a' + (id % 26) as u8; record_bytes];
        wal.append(&payload).expect("append");
    }
    if codec.is_some() {
        let report = wal.compress_sealed().expect("compress");
        assert!(report.segments_compressed > 0, "{report:?}");
    }
    match crash {
        Some(mode) => fs.crash(mode),
        None => {
            wal.close().expect("close");
        }
    }
    drop(wal);
    encode_directory_image(&fs, Path::new(IMAGE_DIR))
}

fn main() {
    // Frames.
    let one = encode_record(1, b"hello");
    let mut run = encode_record(7, b"a");
    run.extend(encode_record(8, b"bb"));
    run.extend(encode_record(9, &[0u8; 40]));
    write_seed("wal_frame_decode", "one-record", &one);
    write_seed("wal_frame_decode", "three-records", &run);
    write_seed("wal_frame_decode", "torn", &run[..run.len() - 7]);
    write_seed("wal_frame_decode", "zeros", &[0u8; 64]);
    write_seed("wal_frame_decode", "empty", b"");

    // Directory images.
    write_seed("wal_recovery", "empty-log", &log_image(0, 0, None));
    write_seed("wal_recovery", "one-segment", &log_image(5, 30, None));
    write_seed("wal_recovery", "rolled-segments", &log_image(60, 200, None));
    for seed in 0..4u64 {
        write_seed(
            "wal_recovery",
            &format!("torn-tail-{seed}"),
            &log_image(40, 300, Some(CrashMode::TearUnsynced { seed })),
        );
    }
    for (name, codec) in [("lz4", SegmentCodec::Lz4), ("zstd", SegmentCodec::Zstd)] {
        write_seed(
            "wal_recovery",
            &format!("compressed-segments-{name}"),
            &compressed_log_image(60, 200, None, Some(codec)),
        );
        write_seed(
            "wal_recovery",
            &format!("compressed-segments-{name}-torn-tail"),
            &compressed_log_image(
                60,
                200,
                Some(CrashMode::TearUnsynced { seed: 7 }),
                Some(codec),
            ),
        );
    }
    write_seed(
        "wal_recovery",
        "unsynced-dropped",
        &log_image(40, 300, Some(CrashMode::DropUnsynced)),
    );

    // HTTP requests.
    let requests: [(&str, &str); 12] = [
        ("put", "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"value\": 1}"),
        ("get", "GET /key/k HTTP/1.1\r\nHost: kvd\r\n\r\n"),
        ("delete", "DELETE /key/k HTTP/1.1\r\nHost: kvd\r\n\r\n"),
        ("pipelined", "PUT /key/a HTTP/1.1\r\nHost: kvd\r\nContent-Length: 16\r\n\r\n{\"value\": [1,2]}GET /key/a HTTP/1.1\r\nHost: kvd\r\nAccept: application/octet-stream\r\n\r\nDELETE /key/a HTTP/1.1\r\nHost: kvd\r\n\r\nGET /keys?prefix=a&limit=5 HTTP/1.1\r\nHost: kvd\r\n\r\n"),
        ("chunked", "PUT /key/c HTTP/1.1\r\nHost: kvd\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"val\r\n8\r\nue\": {}}\r\n0\r\n\r\n"),
        ("raw-value", "PUT /key/r HTTP/1.1\r\nHost: kvd\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\n\x00\x01\x02\x03"),
        ("percent-key", "PUT /key/a%2Fb%20c HTTP/1.1\r\nHost: kvd\r\nContent-Length: 15\r\n\r\n{\"value\": \"x\"}"),
        ("smuggling", "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /key/k HTTP/1.1\r\nHost: kvd\r\n\r\n"),
        ("expect", "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n{\"value\": 1}"),
        ("routes", "GET /health HTTP/1.1\r\nHost: kvd\r\n\r\nGET /segments HTTP/1.1\r\nHost: kvd\r\n\r\nGET /metrics HTTP/1.1\r\nHost: kvd\r\n\r\nGET /cluster_status HTTP/1.1\r\nHost: kvd\r\n\r\n"),
        ("bad-json", "PUT /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 14\r\n\r\n{\"value\": 1} x"),
        ("wrong-method", "POST /key/k HTTP/1.1\r\nHost: kvd\r\nContent-Length: 0\r\n\r\nPUT /health HTTP/1.1\r\nHost: kvd\r\nContent-Length: 0\r\n\r\n"),
    ];
    for (name, request) in requests {
        write_seed("http_request", name, request.as_bytes());
    }
    println!("seed corpus written under fuzz/corpus/");
}
