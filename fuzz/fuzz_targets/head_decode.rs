//! Fuzz target `head_decode`: see `diskspool::testkit::check_head_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::testkit::check_head_decode(data);
});
