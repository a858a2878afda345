//! cargo-fuzz target `sync_message`: see `concord_fuzz::sync_message` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| concord_fuzz::sync_message(data));
