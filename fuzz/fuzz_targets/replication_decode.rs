#![no_main]
//! The fetch protocol's request and response decoders on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvd_fuzz::replication_targets::decode_messages(data));
