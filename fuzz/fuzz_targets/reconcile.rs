//! cargo-fuzz target `reconcile`: see `concord_fuzz::reconcile` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init(), |data: &[u8]| concord_fuzz::reconcile(data));
