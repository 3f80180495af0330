#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate::fuzz::frames(data));
