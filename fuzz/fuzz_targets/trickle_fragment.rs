//! `cargo xtask fuzz trickle_fragment`: see `voice_fuzz::trickle_fragment` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::trickle_fragment(data));
