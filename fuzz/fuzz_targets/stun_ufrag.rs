//! `cargo xtask fuzz stun_ufrag`: see `voice_fuzz::stun_ufrag` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::stun_ufrag(data));
