//! What the criterion benchmarks share: where their files go.

use std::path::PathBuf;

use tempfile::TempDir;

/// A fresh temporary directory for one benchmark, under `$env_var` if set (to measure a given
/// disk), else under Cargo's target temporary directory; named `kv-{name}-bench-{purpose}-…`.
pub fn fresh_directory(env_var: &str, name: &str, purpose: &str) -> TempDir {
    let parent = match std::env::var_os(env_var) {
        Some(directory) => PathBuf::from(directory),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    std::fs::create_dir_all(&parent).expect("create the benchmark directory");
    tempfile::Builder::new()
        .prefix(&format!("kv-{name}-bench-{purpose}-"))
        .tempdir_in(&parent)
        .unwrap_or_else(|error| panic!("temporary directory in {}: {error}", parent.display()))
}
