#![no_main]
//! A whole WAL directory image, opened in every recovery mode.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvd_fuzz::wal_targets::recover_directory(data));
