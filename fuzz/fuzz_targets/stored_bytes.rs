//! cargo-fuzz target `stored_bytes`: see `concord_fuzz::stored_bytes` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| concord_fuzz::stored_bytes(data));
