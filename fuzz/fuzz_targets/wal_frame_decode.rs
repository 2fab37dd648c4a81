#![no_main]
//! `kv_wal::frame::decode` and `decode_all` on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvd_fuzz::wal_targets::decode_frames(data));
