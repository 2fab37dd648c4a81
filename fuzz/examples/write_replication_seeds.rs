//! Writes the replication decoder's seed inputs into `fuzz/corpus/replication_decode/`.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/replication_decode");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (index, seed) in kvd_fuzz::replication_targets::seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{index}")), seed).expect("write seed");
    }
}
