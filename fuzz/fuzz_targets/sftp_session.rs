#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| robosync_transport::fuzzing::sftp_session(data));
