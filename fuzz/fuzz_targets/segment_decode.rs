//! Fuzz target `segment_decode`: see `diskspool::testkit::check_segment_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::testkit::check_segment_decode(data);
});
