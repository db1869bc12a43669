//! `cargo xtask fuzz join_token`: see `voice_fuzz::join_token` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::join_token(data));
