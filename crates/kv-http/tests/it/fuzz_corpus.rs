//! Replays the committed `http_request` fuzz corpus (`fuzz/corpus/http_request/`) through the
//! function the cargo-fuzz target runs: raw bytes into hyper's server and `kv_http::handle`,
//! answers checked (well-formed, never a 500).

#[path = "../../../../fuzz/src/http_target.rs"]
mod http_target;

use std::path::{Path, PathBuf};

use crate::support::node;

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

#[test]
fn the_http_request_corpus_replays_cleanly() {
    let runtime = http_target::runtime();
    let files = corpus("http_request");
    let mut answered = 0;
    for file in &files {
        // A fresh node per input, as the fuzzer's inputs each start from their own bytes.
        let node = node();
        let data = std::fs::read(file).expect("corpus file");
        let answers = http_target::serve_raw_bytes(&runtime, &node.state, &data);
        answered += usize::from(!answers.is_empty());
    }
    println!("http_request: replayed {} corpus inputs", files.len());
    assert!(answered > 0, "no corpus input got an answer");
}

/// The checker itself catches what it is for.
#[test]
fn the_answer_check_rejects_server_errors_and_garbage() {
    http_target::check_answers(b"");
    http_target::check_answers(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    for bad in [
        &b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\r\n",
        b"garbage",
    ] {
        let caught = std::panic::catch_unwind(|| http_target::check_answers(bad));
        assert!(caught.is_err(), "{:?} passed", String::from_utf8_lossy(bad));
    }
}
