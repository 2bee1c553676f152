//! Fuzz target `ops_model`: see `diskspool::testkit::check_ops_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::testkit::check_ops_model(data);
});
