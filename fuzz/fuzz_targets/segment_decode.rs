//! Fuzz target `segment_decode`: see `diskspool::fuzzing::check_segment_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::fuzzing::check_segment_decode(data);
});
