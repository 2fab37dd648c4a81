//! The `kvd` binary: everything is in the `kvd` library (`lib.rs`), but the choice of memory
//! allocator.
//!
//! kvd allocates through jemalloc rather than glibc's malloc. With glibc, the threads that
//! apply writes to the map (tokio's workers, whichever completes a group commit) each take
//! memory from an arena of their own, and the blocks freed in one arena are not reused by the
//! others: 1M keys of 16 B with 100 B values written once left a release kvd at 192 MiB of RSS
//! with glibc's default arenas, 159 MiB with `MALLOC_ARENA_MAX=1`, 155 MiB with jemalloc
//! (Redis's allocator too): `docs/benchmarks.md`, "Memory per key against Redis".
//!
//! jemalloc runs with its background thread (the `background_threads` feature, as Redis's
//! `jemalloc-bg-thread yes`): without it, jemalloc returns freed pages to the OS only while
//! the process allocates, so a node restarted with 320 MiB of values, whose snapshot load and
//! log replay peak near twice the data, kept 620–650 MiB of anonymous memory while it idled;
//! with it, 335 MiB within ten seconds (kvd test
//! `restart::the_memory_a_restart_frees_goes_back_to_the_system_while_the_node_idles`).

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    kvd::main()
}
