//! `cargo xtask fuzz sdp_offer`: see `voice_fuzz::sdp_offer` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::sdp_offer(data));
