//! Fuzz target `open_dir`: see `diskspool::testkit::check_open_dir`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskspool::testkit::check_open_dir(data);
});
