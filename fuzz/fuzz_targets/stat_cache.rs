#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| robosync_scanner::fuzzing::stat_cache(data));
