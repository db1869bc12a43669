//! `cargo xtask fuzz twilio_media`: see `voice_fuzz::twilio_media` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voice_fuzz::twilio_media(data));
