//! `cargo xtask fuzz wav`: see `voice_fuzz::wav` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::wav(data));
