//! `cargo xtask fuzz sse_stream`: see `voice_fuzz::sse_stream` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::sse_stream(data));
