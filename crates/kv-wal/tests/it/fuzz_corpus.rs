//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the very functions the
//! cargo-fuzz targets run, so every input a fuzzer ever kept — crashes it found included — is
//! checked by CI without nightly or libFuzzer.

#[path = "../../../../fuzz/src/wal_targets.rs"]
mod wal_targets;

use std::path::{Path, PathBuf};

/// The corpus files of one fuzz target.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        println!("{target}: {}", file.display());
        run(&data);
    }
    println!("{target}: replayed {} corpus inputs", files.len());
}

#[test]
fn the_frame_decoder_corpus_replays_cleanly() {
    replay("wal_frame_decode", wal_targets::decode_frames);
}

#[test]
fn the_directory_recovery_corpus_replays_cleanly() {
    replay("wal_recovery", wal_targets::recover_directory);
}

/// The image format describes real logs: a log's image decodes to the same files, and
/// recovers in every mode.
#[test]
fn a_real_log_round_trips_through_the_image_format() {
    use kv_wal::fs::FileSystem;
    use kv_wal::sim::SimFs;
    use kv_wal::{SyncPolicy, Wal, WalOptions};

    let fs = SimFs::new();
    let dir = Path::new(wal_targets::IMAGE_DIR);
    let options = WalOptions {
        segment_bytes_max: wal_targets::IMAGE_SEGMENT_BYTES_MAX,
        sync_policy: SyncPolicy::Never,
        file_system: std::sync::Arc::new(fs.clone()),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir, options).expect("open");
    for id in 1..=50u64 {
        wal.append(&[id as u8; 150]).expect("append");
    }
    wal.close().expect("close");
    drop(wal);
    let image = wal_targets::encode_directory_image(&fs, dir);
    let decoded = wal_targets::directory_image(&image);
    let mut names = fs.list_dir(dir).expect("list");
    names.retain(|name| name != "wal.lock");
    assert!(names.len() > 3, "the log rolled: {names:?}");
    for name in &names {
        assert_eq!(
            decoded.read_file(&dir.join(name)).expect("decoded file"),
            fs.read_file(&dir.join(name)).expect("original file"),
            "{name}"
        );
    }
    wal_targets::recover_directory(&image);
}
