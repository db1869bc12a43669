//! `cargo xtask fuzz session_config`: see `voice_fuzz::session_config` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::session_config(data));
