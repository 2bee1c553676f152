//! Fuzz target `acklog_decode`: see `diskspool::testkit::check_acklog_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::testkit::check_acklog_decode(data);
});
