//! cargo-fuzz target `json_patch`: see `concord_fuzz::json_patch` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| concord_fuzz::json_patch(data));
