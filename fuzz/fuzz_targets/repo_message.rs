//! cargo-fuzz target `repo_message`: see `concord_fuzz::repo_message` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| concord_fuzz::repo_message(data));
