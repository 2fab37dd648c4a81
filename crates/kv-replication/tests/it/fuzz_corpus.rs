//! Replays the committed fuzz corpus of the replication decoders (`fuzz/corpus/
//! replication_decode/`) through the very function the cargo-fuzz target runs.

#[path = "../../../../fuzz/src/replication_targets.rs"]
mod replication_targets;

use std::path::Path;

#[test]
fn the_replication_decoder_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/replication_decode");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= replication_targets::seeds().len(),
        "the corpus holds at least the seeds"
    );
    for file in &files {
        replication_targets::decode_messages(&std::fs::read(file).expect("corpus file"));
    }
    for seed in replication_targets::seeds() {
        replication_targets::decode_messages(&seed);
    }
    println!("replication_decode: replayed {} corpus inputs", files.len());
}
