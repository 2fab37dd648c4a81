//! Seeds for randomized tests: from `KV_STORE_SEED` when set, else fresh; always printed.

use std::time::{SystemTime, UNIX_EPOCH};

/// The base seed for a test run, printed so a failure can be replayed.
pub fn base_seed(test_name: &str) -> u64 {
    let seed = match std::env::var("KV_STORE_SEED") {
        Ok(text) => text.parse().expect("KV_STORE_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    println!("{test_name}: seed {seed} (replay with KV_STORE_SEED={seed})");
    seed
}
